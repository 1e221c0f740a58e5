"""The dataset registry: ``RawSample``, the ``RawDataset`` base class, and loading user modules."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, TypedDict

from aligner.errors import UserError

if TYPE_CHECKING:
    import datasets

SAMPLE_FIELDS = ("question", "messages", "dialogue", "answer", "correction", "input")


class DataError(UserError):
    """Bad input a user can fix: the message is one line naming the file, record and field."""


class Turn(TypedDict):
    role: str
    """``system``, ``user`` or ``assistant``."""
    content: str


class RawSample(TypedDict, total=False):
    """One correction record: ``question`` (or ``messages``) + ``answer`` + ``correction``, or a
    formatted ``input`` + ``correction``.

    The original toolkit's samples work as they are: ``input`` + ``answer``, where ``answer`` is
    the target; and ``dialogue`` (or an ``input`` list), alternating user and assistant lines
    whose last line is the target.
    """

    question: str
    """The user's question."""
    messages: list[Turn]
    """A conversation instead of ``question``: the turns up to and including the user turn that
    ``answer`` replies to."""
    answer: str
    """The upstream model's answer, to be corrected."""
    correction: str
    """The corrected answer: the training target."""
    input: str | list[str]
    """An already formatted user turn, used instead of ``question`` and ``answer``."""
    dialogue: list[str]
    """The original toolkit's dialogue: alternating user and assistant lines, the last one the
    target."""


class RawDataset:
    """Base class of every dataset usable as ``--train_datasets NAME[:PROPORTION[:PATH]]``.

    Subclass it, set ``NAME`` (and optionally ``ALIASES``), and implement ``__len__`` and
    ``__getitem__`` returning a ``RawSample``. Defining the class registers it. Datasets that
    already hold Arrow data may override ``to_hf_dataset`` to skip the per-record loop.
    """

    NAME: ClassVar[str]
    ALIASES: ClassVar[tuple[str, ...]] = ()
    COLUMN_MAP: ClassVar[bool] = False
    """Whether the class takes a ``column_map`` argument, which ``--column_map`` passes: the
    mapping of the record fields onto its source's columns (``{"question": "prompt"}``)."""
    _registry: ClassVar[dict[str, type[RawDataset]]] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "NAME" not in cls.__dict__:
            return  # an abstract intermediate class
        # Only the class's own aliases: a subclass of a registered dataset has a name of its own.
        for name in (cls.NAME, *cls.__dict__.get("ALIASES", ())):
            known = RawDataset._registry.get(name)
            # Re-running the same module (a reload, a notebook cell) replaces its own class.
            same = known is not None and (known.__module__, known.__qualname__) == (
                cls.__module__,
                cls.__qualname__,
            )
            if known is not None and not same:
                raise DataError(
                    f"dataset name {name!r} of {_defined_at(cls)} is already registered by "
                    f"{_defined_at(known)}"
                )
            RawDataset._registry[name] = cls

    # A subclass written for the original toolkit may set its own attributes in __init__
    # without calling this one: nothing here relies on it having run.
    path: str | None = None

    def __init__(self, path: str | None = None) -> None:
        self.path = path

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> RawSample:
        raise NotImplementedError

    def __iter__(self) -> Iterator[RawSample]:
        return (self[i] for i in range(len(self)))

    @property
    def source(self) -> str:
        """How errors name this dataset."""
        return self.path or self.NAME

    def cache_key(self) -> str | None:
        """A key that changes whenever the records change, or None to hash the records."""
        return None

    def _size(self) -> int:
        """``len(self)``, or one line naming the class when its ``__len__`` fails or returns
        something that is not a usable count."""
        where = f"{self.source} ({type(self).__name__})"
        try:
            size = len(self)
        except Exception as error:  # a float, a negative or too large a count, or a raise
            raise DataError(
                f"{where}: __len__ gave no usable length: {_described(error)}"
            ) from None
        return size

    def to_hf_dataset(
        self, *, lenient: bool = False, cache_dir: str | None = None
    ) -> tuple[datasets.Dataset, list[str]]:
        """The validated records as a ``datasets.Dataset`` and the problems skipped (lenient).

        ``cache_dir`` is where a subclass may keep converted files; this default ignores it.
        """
        import datasets

        from aligner.datasets.validation import normalize_sample

        rows: dict[str, list[object]] = {f: [] for f in SAMPLE_FIELDS}
        skipped: list[str] = []
        name = type(self).__name__
        for index in range(self._size()):
            where = f"{self.source} ({name}): record {index}"
            try:
                sample = self[index]
            except Exception as error:  # the user's code failing: one line, not a traceback
                raise DataError(f"{where}: __getitem__ raised {_described(error)}") from None
            record, problem = normalize_sample(sample, where)
            if problem is not None:
                if not lenient:
                    raise DataError(problem)
                skipped.append(problem)
                continue
            for field in SAMPLE_FIELDS:
                rows[field].append(record.get(field))
        used = {f: v for f, v in rows.items() if any(x is not None for x in v)}
        if not used:
            raise DataError(f"{self.source} ({name}): no valid sample")
        string = datasets.Value("string")
        kinds = {"messages": [{"role": string, "content": string}], "dialogue": [string]}
        features = datasets.Features({f: kinds.get(f, string) for f in used})
        return datasets.Dataset.from_dict(used, features=features), skipped


def _described(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


USER_MODULES = "aligner_user_datasets"
"""The package that ``--dataset_module`` files are imported into."""


def _defined_at(cls: type) -> str:
    """A class as a user knows it: by its file when it came from a ``--dataset_module`` file."""
    module = sys.modules.get(cls.__module__)
    file = getattr(module, "__file__", None)
    if cls.__module__.startswith(f"{USER_MODULES}.") and file:
        return f"{cls.__qualname__} ({file})"
    return f"{cls.__module__}.{cls.__qualname__}"


def _module_name(path: Path) -> str:
    """A module name of its own for each file: two files both named ``data.py`` stay apart."""
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    return f"{USER_MODULES}.{path.stem}_{digest}"


def registered_names() -> list[str]:
    return sorted(RawDataset._registry)


def get_dataset_class(name: str) -> type[RawDataset]:
    try:
        return RawDataset._registry[name]
    except KeyError:
        if Path(name).suffix or name.startswith((".", "/", "~")):
            # Meant as a file (data/train.jsonl, ./set): say so, not "unknown dataset".
            raise DataError(
                f"{name}: no such file or folder (nor a registered dataset of that name)"
            ) from None
        known = ", ".join(registered_names())
        raise DataError(
            f"unknown dataset {name!r}; known datasets: {known} "
            "(register your own with --dataset_module, or pass a file path)"
        ) from None


def load_dataset_modules(modules: Iterable[str]) -> None:
    """Import user modules (``pkg.mod`` or ``path/to/file.py``) so their datasets register."""
    for module in modules:
        try:
            if module.endswith(".py") or Path(module).is_file():
                path = Path(module).resolve()
                name = _module_name(path)
                spec = importlib.util.spec_from_file_location(name, path)
                if spec is None or spec.loader is None:
                    raise ImportError(f"cannot load {path}")
                loaded = importlib.util.module_from_spec(spec)
                sys.modules[name] = loaded
                spec.loader.exec_module(loaded)
            else:
                importlib.import_module(module)
        except DataError:
            raise
        except Exception as error:  # any failure inside a user's module is reported as one line
            raise DataError(
                f"--dataset_module {module}: cannot import: {type(error).__name__}: {error}"
            ) from None
