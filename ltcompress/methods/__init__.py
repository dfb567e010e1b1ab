"""The method registry. Names, one-line descriptions and sources register here without importing torch;
each implementation (one file per loss) loads on first use.

A method registered from outside the package uses ``register_method`` with the class itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ltcompress.registry import Registry

if TYPE_CHECKING:
    from ltcompress.methods.base import Method

METHODS: Registry[type["Method"]] = Registry("method")


@dataclass(frozen=True)
class MethodInfo:
    name: str
    summary: str
    source: str
    status: str  # "exact" (follows its source) or "reading" (our reading of an unread source)
    distills: bool  # needs a teacher

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def register_method(name: str, target: Any, *, summary: str, source: str, status: str = "exact",
                    distills: bool = True) -> None:
    """Register a method class (or a lazy ``"module:Class"`` string) under `name`."""
    if status not in ("exact", "reading"):
        raise ValueError("status must be 'exact' or 'reading'")
    METHODS.register(name, target, lazy=isinstance(target, str),
                     info=MethodInfo(name, summary, source, status, distills))


def method_info(name: str) -> MethodInfo:
    return METHODS.entry(name).meta["info"]


def list_methods() -> list[MethodInfo]:
    return [method_info(n) for n in METHODS.names()]


register_method("ce", "ltcompress.methods.ce:CE", distills=False,
                summary="Cross-entropy on the labels; no teacher (baseline, and the default teacher loss)",
                source="-")
register_method("kd", "ltcompress.methods.kd:KD",
                summary="Hinton knowledge distillation: CE plus T^2-scaled KL to the softened teacher",
                source="Hinton et al. 2015; defaults from mdistiller (CIFAR)")
register_method("bkd", "ltcompress.methods.bkd:BKD",
                summary="Balanced KD: CE plus KL to a teacher distribution re-weighted per class by "
                        "effective-number weights",
                source="Zhang et al., Neurocomputing 2023 (authors' code losses.py / train_student.py)")
