"""A run's `hf/` export: loaded by `transformers` alone, it is crammit's model, logit for logit.

The load runs in a fresh venv holding only torch and transformers (this venv's versions, and
their dependencies), as a user without crammit would load a shared model.
"""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from safetensors.torch import load_file

from crammit.config import Arch
from crammit.errors import CrammitError
from crammit.model.bert import CrammedBert
from crammit.model.classifier import SequenceClassifier
from crammit.train import rundir
from tests.helpers import GLUE_WORDS, write_finished_run

TEXTS = [" ".join(GLUE_WORDS)] * 20
PAIRS = (["the cats sleep", "rain falls quietly in the park today"], ["dogs run", "the cats run"])
NUM_LABELS = 3

# Run with `python -I`: neither the working directory nor PYTHONPATH is on its path.
WITHOUT_CRAMMIT = f"""
import importlib.util
import sys
from importlib import metadata
from pathlib import Path

assert all(importlib.util.find_spec(name) is None for name in ("crammit", "ray", "deepspeed"))

import torch
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer

export, work = Path(sys.argv[1]), Path(sys.argv[2])
pairs = {PAIRS!r}

# Without the flag, transformers asks whether to run the export's code (for its config) and,
# told no (here: no input), loads the tokenizer all the same; with it, it does not ask.
tokenizer = AutoTokenizer.from_pretrained(export)
batch = tokenizer(*pairs, padding=True, return_tensors="pt")
assert set(batch) == {{"input_ids", "attention_mask"}}, set(batch)
trusted = AutoTokenizer.from_pretrained(export, trust_remote_code=True)
trusted = trusted(*pairs, padding=True, return_tensors="pt")
assert all(torch.equal(trusted[key], batch[key]) for key in batch) and set(trusted) == set(batch)
assert not batch["attention_mask"].all()  # the shorter pair is padded

model, info = AutoModelForMaskedLM.from_pretrained(export, trust_remote_code=True, output_loading_info=True)
assert not any(info.values()), info  # every weight read, none left over
with torch.no_grad():
    mlm_logits = model.eval()(**batch).logits
    # BERT-style callers send segment ids; the model takes and ignores them.
    assert torch.equal(model(**batch, token_type_ids=torch.zeros_like(batch["input_ids"])).logits, mlm_logits)

model.save_pretrained(work / "saved")
tokenizer.save_pretrained(work / "saved")
again = AutoModelForMaskedLM.from_pretrained(work / "saved", trust_remote_code=True).eval()
tokenized = AutoTokenizer.from_pretrained(work / "saved")(*pairs, padding=True, return_tensors="pt")
assert torch.equal(tokenized["input_ids"], batch["input_ids"])
with torch.no_grad():
    assert torch.equal(again(**batch).logits, mlm_logits)

torch.manual_seed(0)
classifier, info = AutoModelForSequenceClassification.from_pretrained(
    export, trust_remote_code=True, num_labels={NUM_LABELS}, output_loading_info=True)
head = {{"head.pooler.weight", "head.pooler.bias", "head.out.weight", "head.out.bias"}}
assert set(info["missing_keys"]) == head, info  # the encoder is read, the head is new
before = {{name: parameter.detach().clone() for name, parameter in classifier.named_parameters()}}
optimizer = torch.optim.AdamW(classifier.parameters(), lr=1e-3, weight_decay=0.0)  # a change is a gradient's
loss = classifier.train()(**batch, labels=torch.tensor([0, 2])).loss
loss.backward()
optimizer.step()
assert torch.isfinite(loss), loss
unchanged = [name for name, value in classifier.named_parameters() if torch.equal(value, before[name])]
assert not unchanged, unchanged
with torch.no_grad():
    classifier_logits = classifier.eval()(**batch).logits
classifier.save_pretrained(work / "classifier")
torch.save({{**batch, "mlm_logits": mlm_logits, "classifier_logits": classifier_logits}}, work / "outputs.pt")
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished tiny crammed run, every weight moved off its initial value (a norm's ones, the
    positions' scale), so a loader that initialises one instead of reading it is caught;
    finishing wrote its `hf/`."""
    run = write_finished_run(tmp_path_factory.mktemp("hf") / "run", TEXTS)
    model = CrammedBert(rundir.final_model_config(run))
    torch.manual_seed(1)
    model.load_state_dict({name: weight + 0.1 * torch.randn_like(weight)
                           for name, weight in rundir.load_final_weights(run).items()})
    rundir.save_final_model(run, model, rundir.load_config(run))
    return run


def _with_requirements(names: list[str]) -> list[metadata.Distribution]:
    """These installed distributions and every one they require, as pip would install them."""
    found: dict[str, metadata.Distribution] = {}
    pending = list(names)
    while pending:
        name = canonicalize_name(pending.pop())
        if name in found:
            continue
        found[name] = distribution = metadata.distribution(name)
        for text in distribution.requires or ():
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return list(found.values())


def torch_and_transformers_venv(directory: Path) -> Path:
    """A new venv whose site-packages holds torch, transformers and their dependencies, and
    nothing else: links to this venv's installed files (its versions, without unpacking
    torch's wheel again); its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(directory)], check=True, timeout=300)
    (site_packages,) = (directory / "lib").glob("python*/site-packages")
    for distribution in _with_requirements(["torch", "transformers"]):
        tops = {Path(file).parts[0] for file in distribution.files or () if not str(file).startswith("..")}
        for top in tops:
            installed = Path(distribution.locate_file(top))
            if installed.exists() and not (site_packages / top).exists():
                (site_packages / top).symlink_to(installed)
    return directory / "bin" / "python"


@pytest.mark.slow
def test_transformers_alone_loads_the_export_as_crammit_s_model(run, tmp_path):
    python = torch_and_transformers_venv(tmp_path / "venv")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    command = [str(python), "-I", "-c", WITHOUT_CRAMMIT, str(run / rundir.HF_DIR), str(tmp_path)]
    result = subprocess.run(command, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    outputs = torch.load(tmp_path / "outputs.pt")
    input_ids, attention_mask = outputs["input_ids"], outputs["attention_mask"].bool()

    config = rundir.final_model_config(run)
    model = CrammedBert(config).eval()
    model.load_state_dict(rundir.load_final_weights(run))
    with torch.no_grad():
        logits = model.decode(model.encode(input_ids, attention_mask))
    assert outputs["mlm_logits"].dtype == torch.float32
    torch.testing.assert_close(outputs["mlm_logits"], logits, atol=1e-5, rtol=0)

    # The fine-tuned classifier is crammit's GLUE model, weight for weight.
    classifier = SequenceClassifier(CrammedBert(config), config, NUM_LABELS).eval()
    classifier.load_state_dict(load_file(tmp_path / "classifier" / "model.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(outputs["classifier_logits"], classifier(input_ids, attention_mask),
                                   atol=1e-5, rtol=0)


def test_the_export_carries_crammit_s_own_model_code(run):
    copied_from = {"modeling_crammed_bert.py": "crammit.model.hf", "bert.py": "crammit.model.bert",
                   "classifier.py": "crammit.model.classifier", "hf_config.py": "crammit.model.hf_config",
                   "config.py": "crammit.config",
                   "errors.py": "crammit.errors"}
    export = run / rundir.HF_DIR
    assert {path.name for path in export.glob("*.py")} == set(copied_from)
    for name, module in copied_from.items():
        copied = (export / name).read_text()
        nodes = list(ast.walk(ast.parse(copied)))
        absolute = {alias.name for node in nodes if isinstance(node, ast.Import) for alias in node.names}
        absolute |= {node.module for node in nodes if isinstance(node, ast.ImportFrom) and node.level == 0}
        assert not {module for module in absolute if module.split(".")[0] == "crammit"}
        # The module's own lines, but for its imports of crammit modules, now sibling imports.
        source = Path(importlib.import_module(module).__file__).read_text()
        differing = set(copied.splitlines()) ^ set(source.splitlines())
        assert all(line.startswith(("from .", "from crammit.")) for line in differing), differing


def test_the_original_bert_exports_as_bert_for_masked_lm(tmp_path):
    from transformers import AutoTokenizer, BertForMaskedLM

    from crammit.model.build import build_model

    run = write_finished_run(tmp_path / "run", TEXTS, arch=Arch.BERT)
    tokenizer = AutoTokenizer.from_pretrained(run / rundir.HF_DIR)
    batch = tokenizer(*PAIRS, padding=True, return_tensors="pt")
    assert set(batch) == {"input_ids", "attention_mask"}
    model = build_model(rundir.final_model_config(run)).eval()
    model.load_state_dict(rundir.load_final_weights(run))
    hf = BertForMaskedLM.from_pretrained(run / rundir.HF_DIR).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(**batch).logits, model.hf(**batch).logits, atol=1e-5, rtol=0)


def test_an_export_replaces_an_earlier_one_and_nothing_else(run, tmp_path):
    out = tmp_path / "exported"
    rundir.export_hf(run, out)
    rundir.export_hf(run, out)
    assert rundir.is_hf_dir(out)
    kept = tmp_path / "notes"
    kept.mkdir()
    (kept / "todo.txt").write_text("keep me")
    for target in (kept, run):  # the run directory itself holds a config.json, crammit's
        with pytest.raises(CrammitError, match="is not a Hugging Face model directory"):
            rundir.export_hf(run, target)
    assert (kept / "todo.txt").read_text() == "keep me" and rundir.is_run_dir(run)
