"""Bad input, every time a one-line message saying what and where, exit code 2, no
traceback (docs/reliability.md)."""

from __future__ import annotations

import json

import huggingface_hub.constants
import pytest

from spo.cli import main

GOOD_ROW = json.dumps({"question": "1+1?", "answer": "so #### 2"}).encode()


def gsm8k(path):
    return ["task.name=gsm8k", f"task.options={{train_path: {path}, eval_path: {path}}}", "task.prompt_format=plain"]


def write(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


CASES = {  # name: (command line given tmp_path, what the message must say)
    "non-UTF-8 data": (lambda t: ["train", "--config", "smoke",
                                  *gsm8k(write(t, "d.jsonl", GOOD_ROW + b'\n{"question": "\xff"}\n'))],
                       ["data error", "d.jsonl:2", "not UTF-8"]),
    "binary data": (lambda t: ["train", "--config", "smoke", *gsm8k(write(t, "b.jsonl", b"\x00\x01\x89PNG\r\n"))],
                    ["data error", "b.jsonl:1"]),
    "empty dataset": (lambda t: ["train", "--config", "smoke", *gsm8k(write(t, "e.jsonl", b"\n\n"))],
                      ["e.jsonl: no data rows"]),
    "missing data file": (lambda t: ["train", "--config", "smoke", *gsm8k(t / "nowhere.jsonl")],
                          ["data file not found", "nowhere.jsonl"]),
    "unknown reasoning-gym dataset": (lambda t: ["train", "--config", "smoke", "task.options.dataset=chain_sun"],
                                      ["task.options.dataset", "unknown reasoning-gym dataset 'chain_sun'",
                                       "chain_sum"]),
    "bad reasoning-gym option": (lambda t: ["train", "--config", "smoke",
                                            "task.options.dataset_options={min_terms: x}"],
                                 ["task.options.dataset_options", "chain_sum"]),
    "task option of the wrong type": (lambda t: ["train", "--config", "smoke", "task.options.train_size=many"],
                                      ["task.options.train_size", "expected int"]),
    "model folder that does not exist": (lambda t: ["train", "--config", "smoke",
                                                    f"model.name_or_path={t}/no/such/model"],
                                         ["no such folder", "no/such/model"]),
    "hub id that does not exist": (lambda t: ["train", "--config", "smoke", "model.name_or_path=nobody-xyz/no-model"],
                                   ["'nobody-xyz/no-model'", "not a local folder", "Hugging Face hub"]),
    "tokenizer without a chat template": (lambda t: ["train", "--config", "smoke", "--output-dir", str(t / "run"),
                                                     "model.name_or_path=tiny-char-llama", "task.prompt_format=chat"],
                                          ["task.prompt_format=chat", "no chat template", "task.prompt_format=plain"]),
    "YAML list": (lambda t: ["train", "--config", str(write(t, "l.yaml", b"- 1\n- 2\n"))],
                  ["l.yaml", "must be a mapping", "a list"]),
    "YAML scalar": (lambda t: ["train", "--config", str(write(t, "s.yaml", b"42\n"))], ["s.yaml", "must be a mapping"]),
    "YAML not UTF-8": (lambda t: ["train", "--config", str(write(t, "u.yaml", b"a: 1\nb: \xfe\xff\n"))],
                       ["u.yaml:2", "not UTF-8"]),
    "YAML syntax": (lambda t: ["train", "--config", str(write(t, "y.yaml", b"a: [1, 2\n"))],
                    ["y.yaml", "not valid YAML"]),
    "override into a value": (lambda t: ["train", "--config", "smoke", "model.name_or_path.x=1"],
                              ["model.name_or_path", "not a section"]),
    "override of a section": (lambda t: ["train", "--config", "smoke", "sampling=3"],
                              ["sampling", "expected a mapping"]),
    "override value not YAML": (lambda t: ["train", "--config", "smoke", "optim.lr=[1"],
                                ["optim.lr", "not valid YAML"]),
    "override without =": (lambda t: ["train", "--config", "smoke", "iterations"], ["iterations", "section.key=value"]),
    "eval of a missing model": (lambda t: ["eval", "./no-such-model", "--config", "smoke"], ["no such folder"]),
    "sft on a task without solutions": (lambda t: ["sft", "--output-dir", str(t / "sft"), "task.name=reasoning_gym"],
                                        ["task.name", "no gold solutions"]),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_clear_line_and_exit_code_2(name, tmp_path, capsys, monkeypatch):
    # a missing hub id fails at once instead of retrying for a minute (no network here)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    argv, expected = CASES[name]
    work = tmp_path / "cwd"  # `spo train` without --output-dir would create runs/<time> here
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(argv(tmp_path)) == 2
    assert list(work.iterdir()) == []  # a start that failed removes the run folder it created
    err = capsys.readouterr().err
    message = err.strip().splitlines()[-1]
    assert message.startswith("spo: ") and "Traceback" not in err
    for text in expected:
        assert text in message, (text, message)
