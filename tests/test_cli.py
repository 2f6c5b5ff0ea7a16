"""The command-line tools' shared Consul options: the token from a file or the environment,
never echoed, and an unreadable token file refused with a message naming the option."""

import subprocess
import sys

import pytest

from consulspawner import cli

TOOLS = ["consulspawner.janitor", "consulspawner.reach"]


@pytest.mark.parametrize("module", TOOLS)
def test_an_unreadable_token_file_is_refused_naming_the_option(module, tmp_path):
    missing = tmp_path / "no-such-token"
    done = subprocess.run(
        [sys.executable, "-m", module, "--consul-address", "http://127.0.0.1:9", "--token-file", str(missing)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert f"cannot read --token-file {missing}: No such file or directory" in done.stderr


def test_the_token_file_wins_over_the_environment_and_is_stripped(tmp_path, monkeypatch):
    import argparse

    parser = argparse.ArgumentParser()
    cli.add_consul_arguments(parser, token_help="token")
    token_file = tmp_path / "token"
    token_file.write_text("  from-file\n")
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "from-env")
    assert cli.read_token(parser.parse_args(["--token-file", str(token_file)]), "tool") == "from-file"
    assert cli.read_token(parser.parse_args([]), "tool") == "from-env"
    monkeypatch.delenv("CONSUL_HTTP_TOKEN")
    assert cli.read_token(parser.parse_args([]), "tool") is None
    token_file.write_text("\n")
    assert cli.read_token(parser.parse_args(["--token-file", str(token_file)]), "tool") is None
