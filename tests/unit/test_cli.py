"""The `llmops` command, driven in-process through `main(argv)`: generate, models, --version."""

from __future__ import annotations

import subprocess
import sys

import pytest

from llmops import LLM, SamplingParams, __version__
from llmops.cli.main import main

TINY_FLAGS = ["--dtype", "float32", "--kv-cache-tokens", "256", "--block-size", "4"]


def generate_argv(folder: str, *extra: str, prompt: str = "hello") -> list[str]:
    return ["generate", "--model", folder, *TINY_FLAGS, "--max-tokens", "5", "--temperature", "0",
            *extra, prompt]


def assert_clean_error(err: str, *words: str) -> None:
    assert "Traceback" not in err
    for word in words:
        assert word in err, err


def test_generate_prints_the_greedy_text(tiny_folder, capsys):
    assert main(generate_argv(tiny_folder, "--raw")) == 0
    out = capsys.readouterr().out
    llm = LLM(model=tiny_folder, dtype="float32", kv_cache_tokens=256, block_size=4)
    [expected] = llm.generate("hello", SamplingParams(temperature=0, max_tokens=5))
    assert expected.outputs[0].text
    assert out == expected.outputs[0].text + "\n"


def test_generate_applies_the_chat_template_without_raw(tiny_folder, capsys):
    assert main(generate_argv(tiny_folder)) == 0
    out = capsys.readouterr().out
    llm = LLM(model=tiny_folder, dtype="float32", kv_cache_tokens=256, block_size=4)
    ids = llm.get_tokenizer().encode_chat([{"role": "user", "content": "hello"}])
    [expected] = llm.generate([ids], SamplingParams(temperature=0, max_tokens=5))
    assert out == expected.outputs[0].text + "\n"


def test_generate_reads_the_prompt_from_stdin(tiny_folder, capsys, monkeypatch):
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("hello"))
    assert main(generate_argv(tiny_folder, "--raw", prompt="-")) == 0
    from_stdin = capsys.readouterr().out
    assert main(generate_argv(tiny_folder, "--raw")) == 0
    assert capsys.readouterr().out == from_stdin


@pytest.mark.parametrize("flags, words", [
    (["--temperature", "-1"], ["temperature"]),
    (["--max-tokens", "0"], ["max_tokens"]),
    (["--top-p", "1.5"], ["top_p"]),
    (["--block-size", "0"], ["block_size"]),
    (["--max-model-len", "100000"], ["max_model_len"]),
])
def test_generate_bad_value_exits_2_with_a_message(tiny_folder, capsys, flags, words):
    assert main([*generate_argv(tiny_folder, "--raw")[:-1], *flags, "hello"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert_clean_error(captured.err, "llmops: error:", *words)


def test_generate_empty_prompt_exits_2(tiny_folder, capsys):
    assert main(generate_argv(tiny_folder, "--raw", prompt="")) == 2
    assert_clean_error(capsys.readouterr().err, "empty")


def test_generate_unknown_model_exits_2(capsys):
    assert main(["generate", "--model", "/nonexistent/model", "--max-tokens", "1", "hi"]) == 2
    assert_clean_error(capsys.readouterr().err, "/nonexistent/model")


def test_generate_corrupt_tokenizer_exits_2(tiny_folder, tmp_path, capsys):
    import shutil

    folder = tmp_path / "corrupt"
    shutil.copytree(tiny_folder, folder)
    (folder / "tokenizer.json").write_text("{not json")
    assert main(generate_argv(str(folder), "--raw")) == 2
    assert_clean_error(capsys.readouterr().err, "tokenizer.json")


@pytest.mark.parametrize("flags, words", [
    (["--dtype", "float16"], ["--dtype", "float16"]),
    (["--max-tokens", "many"], ["--max-tokens", "many"]),
    (["--no-such-flag"], ["--no-such-flag"]),
])
def test_generate_unparsable_flag_is_a_usage_error(tiny_folder, capsys, flags, words):
    with pytest.raises(SystemExit) as exit_info:
        main([*generate_argv(tiny_folder, "--raw")[:-1], *flags, "hello"])
    assert exit_info.value.code == 2
    assert_clean_error(capsys.readouterr().err, "usage:", *words)


def test_models_import_then_list(tiny_folder, capsys):
    assert main(["models", "list"]) == 0
    assert "no models stored yet" in capsys.readouterr().out
    assert main(["models", "import", tiny_folder, "--name", "tiny"]) == 0
    assert "imported tiny" in capsys.readouterr().out
    assert main(["models", "list"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert len(listing) == 1
    name, fmt = listing[0].split()[:2]
    assert (name, fmt) == ("tiny", "hf")
    # Importing the same content again under its name is a no-op.
    assert main(["models", "import", tiny_folder, "--name", "tiny"]) == 0
    capsys.readouterr()
    assert main(["models", "list"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1


def test_generate_by_stored_name(tiny_folder, capsys):
    assert main(["models", "import", tiny_folder, "--name", "tiny"]) == 0
    capsys.readouterr()
    assert main(["generate", "--model", "tiny", *TINY_FLAGS, "--max-tokens", "5", "--temperature", "0",
                 "--raw", "hello"]) == 0
    by_name = capsys.readouterr().out
    assert main(generate_argv(tiny_folder, "--raw")) == 0
    assert capsys.readouterr().out == by_name


def test_models_import_missing_path_exits_2(capsys):
    assert main(["models", "import", "/nonexistent"]) == 2
    captured = capsys.readouterr()
    assert_clean_error(captured.err, "llmops: error:", "not found", "/nonexistent")


def test_models_import_folder_that_is_not_a_model_exits_2(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a model")
    assert main(["models", "import", str(tmp_path)]) == 2
    assert_clean_error(capsys.readouterr().err, "config.json", "tokenizer.json", "safetensors")


def test_models_import_bad_name_exits_2(tiny_folder, capsys):
    assert main(["models", "import", tiny_folder, "--name", "../escape"]) == 2
    assert_clean_error(capsys.readouterr().err, "name")


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"llmops {__version__}"


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_python_dash_m_help():
    result = subprocess.run([sys.executable, "-m", "llmops", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    for command in ("generate", "models", "bench"):
        assert command in result.stdout
