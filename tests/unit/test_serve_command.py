"""``aligner serve``'s flags: each mistake is one line and exit 2, before any model loads."""

from __future__ import annotations

import pytest

from aligner.commands import serve

UPSTREAM = ["--upstream_url", "http://127.0.0.1:9/v1", "--upstream_model", "m"]


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        ([], "give --upstream_url and --upstream_model"),
        (["--upstream_url", "http://127.0.0.1:9/v1"], "give both --upstream_url"),
        ([*UPSTREAM, "--api_key_env", "ALIGNER_TEST_UNSET_KEY"], "variable is not set"),
        ([*UPSTREAM, "--max_messages", "0"], "--max_messages must be at least 1"),
        ([*UPSTREAM, "--aligner_url", "http://127.0.0.1:9/v1"], "give both --aligner_url"),
        ([*UPSTREAM, "--max_new_tokens", "0"], "--max_new_tokens must be at least 1"),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(
    flags: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = serve.main(["--model_name_or_path", "no-such-folder", *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("aligner serve: error: ") and says in err[0]
