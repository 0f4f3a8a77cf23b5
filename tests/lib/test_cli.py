import subprocess
import sys

from mini_gpt.cli import main


def test_files_command_finds_and_verifies_every_file(capsys):
    assert main(["files"]) == 0
    out = capsys.readouterr().out
    assert out.count("ok ") == 4 and "tinyshakespeare.txt" in out


def test_files_command_reports_missing_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINI_GPT_DATA", str(tmp_path))
    monkeypatch.setenv("MINI_GPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MINI_GPT_OFFLINE", "1")
    assert main(["files"]) == 1
    assert "MINI_GPT_DATA" in capsys.readouterr().err


def test_unknown_command_exits_2():
    proc = subprocess.run([sys.executable, "-m", "mini_gpt.cli", "fly"], capture_output=True, text=True)
    assert proc.returncode == 2 and "invalid choice: 'fly'" in proc.stderr
