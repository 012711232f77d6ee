"""One vocabulary of flags: ``--output`` for what a job writes in every job; the old spellings (``--out``,
``--model-dir``) still work, with a deprecation warning; a missing ``--output`` is a usage error."""

from __future__ import annotations

import pytest

from ipinsights_jobs import cli, export_embeddings, generate, tune


def test_the_old_spelling_still_works_and_says_it_is_deprecated(tmp_path, capsys):
    small = ["--users=20", "--days=3", "--train_days=1", "--n_files=1", "--attacks=10", "--validation_attacks=5"]
    assert generate.main(["--out", str(tmp_path / "old"), *small]) == 0
    assert "--out is deprecated: use --output" in capsys.readouterr().err
    assert generate.main(["--output", str(tmp_path / "new"), *small]) == 0
    assert "deprecated" not in capsys.readouterr().err
    old, new = ({p.name: p.read_bytes() for p in (tmp_path / d / "logs").iterdir()} for d in ("old", "new"))
    assert old == new and old  # the same data set, whichever spelling


@pytest.mark.parametrize(
    "main",
    [
        generate.main,
        export_embeddings.main,
        lambda argv: cli.main(["train", "--train", "x.csv", *argv]),
        lambda argv: tune.main(["--train", "t.csv", "--validation", "v.csv", *argv]),
    ],
)
def test_a_missing_output_is_a_usage_error(main, capsys):
    argv = ["--model", "m"] if main is export_embeddings.main else []
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and "--output" in capsys.readouterr().err


def test_the_entry_point_fails_a_runner_that_ignores_its_return_value(monkeypatch, capsys):
    """A Databricks python_wheel_task calls ``main()`` and ignores what it returns: a failure must raise."""
    monkeypatch.setattr("sys.argv", ["ipinsights", "no-such-command"])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 2
    monkeypatch.setattr("sys.argv", ["ipinsights", "--help"])
    assert cli.main() == 0  # success returns, as before
    assert cli.main(["no-such-command"]) == 2  # an explicit argv returns its status
