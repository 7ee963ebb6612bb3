"""Property-based: whatever bytes a corpus file holds, `crammit data prepare` either prepares
it or stops with one `error:` line and exit code 2 — never a traceback."""

import random

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from crammit import cli
from tests.helpers import GLUE_WORDS

PROSE = " ".join(random.Random(0).choices(GLUE_WORDS, k=4000))


@pytest.mark.slow
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.one_of(st.binary(max_size=4000), st.text(max_size=4000).map(str.encode)))
@example(content=b"")
@example(content=bytes(range(256)) * 64)  # a binary file with a .txt name
@example(content=b"\xff\xfe not utf-8 \xc3\x28\n" * 200)
@example(content=(PROSE * 40).encode())  # one giant line
def test_any_corpus_file_is_prepared_or_refused_in_one_line(tmp_path_factory, ray_session, content):
    root = tmp_path_factory.mktemp("corpus")
    corpus = root / "corpus.txt"
    corpus.write_bytes(content)
    out = root / "out"
    arguments = ["data", "prepare", "--corpus", str(corpus), "--out", str(out), "--vocab-size", "400",
                 "--seq-len", "32"]
    result = CliRunner().invoke(cli.app, arguments)
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    if result.exit_code != 0:
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert result.exit_code == 2 and len(errors) == 1, result.output
        assert not (out / "manifest.json").exists()
