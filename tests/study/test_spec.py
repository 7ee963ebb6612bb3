"""Study specifications: study files, the trials they expand to, and their mistakes."""

from pathlib import Path

import pytest

from crammit.config import Budget
from crammit.errors import CrammitError
from crammit.study.spec import Setting, StudySpec, StudyUnit, parse_budgets, read_study_file

STUDIES = Path(__file__).parents[2] / "studies"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.toml"
    path.write_text(text)
    return path


def test_every_shipped_study_file_reads():
    specs = {path.stem: read_study_file(path) for path in STUDIES.glob("*.toml")}
    assert {"scaling", "crammed_vs_large", "smoke"} <= set(specs)
    scaling = specs["scaling"]
    assert [(s.sizes, s.budgets, s.gpus) for s in scaling.settings] == [
        (("small", "base", "crammed"), (6, 12, 24), 1)]
    assert len(specs["smoke"].trials()) >= 6
    # The CPU ladder as designed: >= 16 trials of >= 4 sizes over >= 30x in compute, seeds where cheap.
    ladder = specs["cpu_ladder"]
    budgets = [trial.budget for trial in ladder.trials()]
    assert len(budgets) >= 16 and max(budgets) / min(budgets) >= 30
    assert len({size for setting in ladder.settings for size in setting.sizes}) >= 4
    assert all(setting.seeds_at(min(setting.budgets)) > 1 for setting in ladder.settings[:3])


def test_trials_are_the_grid_with_deterministic_names():
    spec = StudySpec("s", settings=(Setting("crammed", sizes=("tiny", "mini"), budgets=(0.5, 2e6)),),
                     unit=StudyUnit.TOKENS)
    assert [trial.name for trial in spec.trials()] == [
        "crammed-tiny-0.5tok", "crammed-tiny-2e6tok", "crammed-mini-0.5tok", "crammed-mini-2e6tok"]
    assert [t.name for t in StudySpec("s", (Setting("x", ("tiny",), (6, 24)),)).trials()] == [
        "x-tiny-6h", "x-tiny-24h"]


def test_minutes_become_an_hours_budget():
    assert StudyUnit.MINUTES.budget(30) == Budget.hours(0.5)
    assert StudyUnit.FLOPS.budget(1e15) == Budget.flops(1e15)


def test_a_study_file_round_trips_through_its_dict(tmp_path):
    spec = read_study_file(write(tmp_path, """
name = "mine"
unit = "minutes"
[data]
vocab_size = 8192
[glue]
tasks = ["rte", "mrpc"]
seeds = 3
[[settings]]
name = "small_batch"
sizes = ["tiny"]
budgets = [1, 2]
gpus = 0
workers = 2
[settings.overrides]
batch_size = 64
micro_batch_size = 16
[[settings]]
name = "original"
arch = "bert"
recipe = "bert"
sizes = ["tiny"]
budgets = [1]
"""))
    original = spec.settings[1]
    assert (original.arch, original.recipe_config().peak_lr, original.recipe_config().batch_size) == (
        "bert", 1e-4, 256)
    assert spec.settings[0].recipe_config().batch_size == 64
    assert spec.settings[0].recipe_label() == "crammed (batch_size=64, micro_batch_size=16)"
    assert [task.name for task in spec.glue.task_list()] == ["rte", "mrpc"] and spec.glue.seeds == 3
    assert StudySpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(("text", "fragment"), [
    ('name = "x"\ncolour = "red"\n[[settings]]\nname = "a"\nsizes = ["tiny"]\nbudgets = [1]',
     "unknown key(s) colour"),
    ('[[settings]]\nname = "a"\nsizes = ["tiny"]\nbudgets = [1]\nlr = 1', "unknown key(s) lr"),
    ('[[settings]]\nname = "a"\nsizes = ["tiny"]\nbudgets = [1]\n[settings.overrides]\nlearning_rate = 1',
     "unknown recipe key(s) learning_rate"),
    ('[data]\nvocab = 5\n[[settings]]\nname = "a"\nsizes = ["tiny"]\nbudgets = [1]', "[data]: unknown key"),
    ('[[settings]]\nname = "a"\nsizes = ["huge"]\nbudgets = [1]', "unknown model size 'huge'"),
    ('[[settings]]\nname = "a"\narch = "gpt"\nsizes = ["tiny"]\nbudgets = [1]', "unknown arch 'gpt'"),
    ('[[settings]]\nname = "a"\nrecipe = "adam"\nsizes = ["tiny"]\nbudgets = [1]', "unknown recipe 'adam'"),
    ('[glue]\ntasks = ["wnli"]\n[[settings]]\nname = "a"\nsizes = ["tiny"]\nbudgets = [1]',
     "unknown GLUE task"),
    ('[glue]\nepochs = 3\n[[settings]]\nname = "a"\nsizes = ["tiny"]\nbudgets = [1]', "[glue]: unknown key"),
    ('[[settings]]\nname = "a"\nsizes = ["tiny"]\nbudgets = [0]', "is not a positive number"),
    ('[[settings]]\nname = "a"\nsizes = ["tiny"]\nbudgets = ["six"]', "is not a positive number"),
    ('unit = "days"\n[[settings]]\nname = "a"\nsizes = ["tiny"]\nbudgets = [1]', "unknown unit 'days'"),
    ('name = "x"', "has no settings"),
    ('[[settings]]\nname = "a-b"\nsizes = ["tiny"]\nbudgets = [1]', "letters, digits"),
    ('[[settings]]\nname = "a"\nsizes = ["tiny"]\nbudgets = [1]\nseeds = 0', "seeds must be whole numbers"),
    ('[[settings]]\nname = "a"\nsizes = ["tiny"]\nbudgets = [1, 2]\nseeds = [3]', "one count per budget"),
    ('[data]\norder = "sorted"\n[[settings]]\nname = "a"\nsizes = ["tiny"]\nbudgets = [1]',
     "unknown corpus order 'sorted'"),
    ("this is not toml", "not valid TOML"),
])
def test_study_file_mistakes_are_named(tmp_path, text, fragment):
    with pytest.raises(CrammitError, match=None) as error:
        read_study_file(write(tmp_path, text))
    assert fragment in str(error.value)


def test_budgets_flag():
    assert parse_budgets("6,12, 24") == (6.0, 12.0, 24.0)
    for text, fragment in (("6,x", "'x' is not a number"), ("6,-1", "-1 is not positive"),
                           ("0", "not positive")):
        with pytest.raises(CrammitError) as error:
            parse_budgets(text)
        assert fragment in str(error.value)


def test_seeds_repeat_trials_with_deterministic_names(tmp_path):
    spec = read_study_file(write(tmp_path, """
[[settings]]
name = "a"
sizes = ["tiny"]
budgets = [1, 2, 4]
seeds = [3, 2, 1]
[[settings]]
name = "b"
sizes = ["tiny"]
budgets = [1]
seeds = 2
"""))
    assert [(trial.name, trial.seed) for trial in spec.trials()] == [
        ("a-tiny-1h", 0), ("a-tiny-1h-s1", 1), ("a-tiny-1h-s2", 2), ("a-tiny-2h", 0), ("a-tiny-2h-s1", 1),
        ("a-tiny-4h", 0), ("b-tiny-1h", 0), ("b-tiny-1h-s1", 1)]
    assert StudySpec.from_dict(spec.to_dict()) == spec
    assert spec.data.order == "shuffle" and spec.to_dict()["data"]["order"] == "shuffle"
