"""A final model in Hugging Face's layout, for either arch: the original BERT as
`BertForMaskedLM`; the crammed BERT as `CrammedBertForMaskedLM` (`crammit.model.hf`), with the
modeling code and the `auto_map` that let `transformers` load it without crammit.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from crammit.config import Arch, ModelConfig
from crammit.model.hf_config import BASE_MODEL_PREFIX, WRAPPER_FILE, hf_config

WRAPPER_MODULE = "crammit.model.hf"
_CRAMMIT_IMPORT = re.compile(r"^(\s*)from (crammit(?:\.\w+)+) import ", re.MULTILINE)


def save_model(config: ModelConfig, weights: dict[str, torch.Tensor], out: Path) -> None:
    """`config.json` and `model.safetensors` of the model `weights` (a `build_model` state
    dict) into the directory `out`, and for the crammed arch its code. The crammed arch's
    files are written as `save_pretrained` writes them, without importing transformers: every
    run exports at its end, and the import costs seconds a run."""
    if config.arch is Arch.BERT:
        from crammit.model.original_bert import OriginalBert

        model = OriginalBert(config)
        model.load_state_dict(weights)
        model.save_pretrained(out)
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(hf_config(config), indent=2, sort_keys=True) + "\n")
    encoder = {f"{BASE_MODEL_PREFIX}.{name}": tensor.float().contiguous() for name, tensor in weights.items()}
    save_file(encoder, str(out / "model.safetensors"), metadata={"format": "pt"})
    copy_modeling_code(out)


def copy_modeling_code(out: Path) -> None:
    """The wrapper module and the crammit modules it imports, transitively, side by side in
    `out` with their crammit imports made sibling-relative: the export runs the code that
    trained the model, and a change to the model changes every later export with it."""
    names = _module_closure(WRAPPER_MODULE)
    for module, name in names.items():
        source = Path(importlib.util.find_spec(module).origin).read_text()
        source = _CRAMMIT_IMPORT.sub(lambda match: f"{match[1]}from .{names[match[2]]} import ", source)
        (out / f"{name}.py").write_text(source)


def _module_closure(root: str) -> dict[str, str]:
    """Each crammit module `root` needs (itself included), by the file name it has in an
    export: the wrapper's is Hugging Face's, every other keeps its own."""
    names = {root: WRAPPER_FILE}
    pending = [root]
    while pending:
        importer = pending.pop()
        for module, relative in _crammit_imports(importer):
            if not relative:
                raise ValueError(f"{importer} imports {module} in a form that cannot become a sibling "
                                 "import; write `from crammit.x import y`")
            if module not in names:
                names[module] = module.rsplit(".", 1)[1]
                pending.append(module)
    if len(set(names.values())) < len(names):
        raise ValueError(f"two modules of the export share a file name: {sorted(names)}")
    return names


def _crammit_imports(module: str) -> list[tuple[str, bool]]:
    """The crammit modules `module` imports, anywhere in it, each with whether the import
    has the form `from crammit.x import y`."""
    found = []
    for node in ast.walk(ast.parse(Path(importlib.util.find_spec(module).origin).read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, False) for alias in node.names if alias.name.split(".")[0] == "crammit"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] == "crammit":
            found.append((node.module, node.module != "crammit"))
    return found
