import dataclasses
import json

from crammit.config import LaunchOptions
from crammit.train import rundir
from tests.helpers import tiny_train_config


def test_config_json_round_trips_the_run_and_its_launch_options(tmp_path):
    config = tiny_train_config(tmp_path, tmp_path / "corpus.txt", max_failures=7, checkpoint_every_steps=3)
    rundir.save_config(tmp_path, config)
    assert rundir.load_config(tmp_path) == config


def test_a_config_json_from_before_launch_options_were_split_off_still_loads(tmp_path):
    config = tiny_train_config(tmp_path, tmp_path / "corpus.txt", max_failures=7)
    saved = config.to_dict()
    flat = {key: value for key, value in saved.items() if key != "launch"} | saved["launch"]
    (tmp_path / rundir.CONFIG_FILE).write_text(json.dumps(flat))
    assert rundir.load_config(tmp_path) == config


def test_what_defines_a_run_leaves_out_how_it_is_launched(tmp_path):
    config = tiny_train_config(tmp_path, tmp_path / "corpus.txt")
    relaunched = dataclasses.replace(config, run_dir="elsewhere", launch=LaunchOptions(max_failures=0))
    assert relaunched.run_defining() == config.run_defining()
    assert dataclasses.replace(config, num_workers=2).run_defining() != config.run_defining()
