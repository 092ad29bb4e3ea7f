"""The ``castlib`` command line: every verb answers ``--help`` with its own usage, the verbs
hand their arguments to the module's main, and misuse fails with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest

from castlib import cli


@pytest.mark.parametrize("verb", sorted(cli.VERBS))
def test_every_verb_documents_itself(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        status = cli.main([verb, "--help"])
    except SystemExit as exc:  # argparse's --help
        status = exc.code
    assert status == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:") and len(out.splitlines()) > 2, out


def test_top_level_help_lists_every_verb(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for verb, (summary, _) in cli.VERBS.items():
        assert verb in out and summary.split()[0] in out


def test_misuse_fails_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["bogus"], ["data"], ["data", "list", "--nope"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 2
    assert "invalid choice: 'bogus'" in capsys.readouterr().err


def test_run_hands_its_arguments_to_the_batch_runner(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nope.yaml"
    assert cli.main(["run", str(missing), "--dry-run"]) == 2
    assert f"run config not found: {missing}" in capsys.readouterr().err


def test_data_list_reads_the_data_dir(tmp_path: Path, capsys) -> None:
    from castlib.tasks import repo_data_dir

    assert cli.main(["data", "list", "--data-dir", str(repo_data_dir())]) == 0
    assert "sst2" in capsys.readouterr().out.split()


def test_docs_needs_mkdocs_yml(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(["docs"]) == 2
    assert "no mkdocs.yml" in capsys.readouterr().err
