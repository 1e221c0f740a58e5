"""The dataset registry: registering, aliases, duplicates, unknown names and user modules."""

from __future__ import annotations

import sys
import textwrap

import pytest

from aligner.datasets import (
    DataError,
    RawDataset,
    RawSample,
    get_dataset_class,
    load_dataset_modules,
    registered_names,
)
from aligner.datasets.pipeline import build_dataset
from aligner.prompts import get_template


class _Questions(RawDataset):
    NAME = "test-registry-questions"
    ALIASES = ("test-registry-q",)

    def __len__(self) -> int:
        return 3

    def __getitem__(self, index: int) -> RawSample:
        return RawSample(question=f"q{index}", answer=f"a{index}", correction=f"c{index}")


def test_subclass_with_name_and_alias_is_registered() -> None:
    assert get_dataset_class("test-registry-questions") is _Questions
    assert get_dataset_class("test-registry-q") is _Questions
    assert {"correction-json", "test-registry-questions"} <= set(registered_names())


def test_duplicate_name_from_another_class_is_refused() -> None:
    with pytest.raises(DataError, match="already registered by .*_Questions"):

        class _Clash(RawDataset):  # pragma: no cover - the class body never finishes
            NAME = "test-registry-questions"


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(DataError) as error:
        get_dataset_class("no-such-dataset")
    assert "unknown dataset 'no-such-dataset'" in str(error.value)
    assert "correction-json" in str(error.value) and "test-registry-questions" in str(error.value)


USER_MODULE = textwrap.dedent(
    """
    from aligner.datasets import RawDataset, RawSample

    class Empathy(RawDataset):
        NAME = "{name}"

        def __init__(self, path=None):
            super().__init__(path)
            self.rows = [("Why me?", "Whatever.", "That sounds really hard.")] * 4

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, index):
            question, answer, correction = self.rows[index]
            return RawSample(question=question, answer=answer, correction=correction)

    class Instruct(RawDataset):
        NAME = "{name}-input"

        def __len__(self):
            return 2

        def __getitem__(self, index):
            return RawSample(input=f"Rewrite politely: message {{index}}", correction="Please.")
    """
)


def test_user_module_from_a_file_registers_and_trains(tmp_path, llama_tokenizer) -> None:
    module = tmp_path / "my_datasets.py"
    module.write_text(USER_MODULE.format(name="test-user-file"))
    load_dataset_modules([str(module)])
    dataset, stats = build_dataset(
        ["test-user-file:0.5", "test-user-file-input"],
        llama_tokenizer,
        get_template(),
        max_length=128,
        cache_dir=tmp_path / "cache",
    )
    assert [s.selected for s in stats.sources] == [2, 2]
    last = dataset[3]
    prompt = llama_tokenizer.decode(last["input_ids"][: last["prompt_length"]])
    assert "USER: Rewrite politely: message 1 ASSISTANT:" in prompt


def test_user_module_by_import_name(tmp_path, monkeypatch) -> None:
    package = tmp_path / "my_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "data.py").write_text(USER_MODULE.format(name="test-user-pkg"))
    monkeypatch.syspath_prepend(str(tmp_path))
    load_dataset_modules(["my_pkg.data"])
    assert get_dataset_class("test-user-pkg").__module__ == "my_pkg.data"
    sys.modules.pop("my_pkg.data", None)


def test_two_module_files_of_one_name_both_load(tmp_path) -> None:
    first, second = tmp_path / "a" / "same.py", tmp_path / "b" / "same.py"
    for path, name in ((first, "test-same-a"), (second, "test-same-b")):
        path.parent.mkdir()
        path.write_text(USER_MODULE.format(name=name))
    load_dataset_modules([str(first), str(second)])
    assert get_dataset_class("test-same-a") is not get_dataset_class("test-same-b")
    assert len(get_dataset_class("test-same-a")()) == 4


def test_second_module_file_taking_a_name_is_refused_naming_both_files(tmp_path) -> None:
    first, second = tmp_path / "a" / "same.py", tmp_path / "b" / "same.py"
    for path in (first, second):
        path.parent.mkdir()
        path.write_text(USER_MODULE.format(name="test-same-name"))
    load_dataset_modules([str(first)])
    with pytest.raises(DataError) as error:
        load_dataset_modules([str(second)])
    assert str(error.value) == (
        f"dataset name 'test-same-name' of Empathy ({second}) is already registered by "
        f"Empathy ({first})"
    )


def test_broken_user_module_is_one_line(tmp_path) -> None:
    module = tmp_path / "broken.py"
    module.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(
        DataError, match=r"--dataset_module .*broken.py: cannot import: RuntimeError: boom"
    ):
        load_dataset_modules([str(module)])
    with pytest.raises(DataError, match="no_such_module_xyz"):
        load_dataset_modules(["no_such_module_xyz"])


def test_invalid_sample_from_a_class_names_the_record(tmp_path, llama_tokenizer) -> None:
    class _Bad(RawDataset):
        NAME = "test-registry-bad"

        def __len__(self) -> int:
            return 3

        def __getitem__(self, index: int) -> RawSample:
            if index == 2:
                return RawSample(question="q", answer="a", correction=None)  # type: ignore[typeddict-item]
            return RawSample(question="q", answer="a", correction="c")

    with pytest.raises(
        DataError, match=r"test-registry-bad \(_Bad\): record 2: field 'correction' is null"
    ):
        build_dataset(
            ["test-registry-bad"],
            llama_tokenizer,
            get_template(),
            max_length=64,
            cache_dir=tmp_path,
        )
    dataset, stats = build_dataset(
        ["test-registry-bad"],
        llama_tokenizer,
        get_template(),
        max_length=64,
        cache_dir=tmp_path,
        lenient=True,
    )
    assert len(dataset) == 2 and stats.sources[0].invalid == 1


class _Faulty(RawDataset):
    """A user's class whose ``__len__`` or ``__getitem__`` is wrong."""

    NAME = "test-registry-faulty"
    length: object = 3

    def __len__(self) -> int:
        return self.length  # type: ignore[return-value]

    def __getitem__(self, index: int) -> RawSample:
        if index == 1:
            raise KeyError("no row 'r1'")
        return RawSample(question="q", answer="a", correction="c")


@pytest.mark.parametrize(
    ("length", "message"),
    [
        (3, r"__getitem__ raised KeyError: \"no row 'r1'\""),
        (2.5, "__len__ gave no usable length: TypeError: 'float' object cannot be interpreted"),
        (10**20, "__len__ gave no usable length: OverflowError: cannot fit 'int'"),
    ],
)
def test_errors_inside_a_dataset_class_name_the_class_and_index(
    monkeypatch, length: object, message: str
) -> None:
    monkeypatch.setattr(_Faulty, "length", length)
    record = ": record 1" if length == 3 else ""
    with pytest.raises(DataError, match=rf"^test-registry-faulty \(_Faulty\){record}: {message}"):
        _Faulty().to_hf_dataset(lenient=True)
