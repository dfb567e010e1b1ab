"""The method registry. Names, one-line descriptions and sources register here without importing torch;
each implementation (one file per loss) loads on first use.

A method from another package registers through the ``ltcompress.methods`` entry-point group (docs/extending.md),
or with ``register_method`` called before the method is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ltcompress.registry import Registry

if TYPE_CHECKING:
    from ltcompress.methods.base import Method

METHODS: Registry[type["Method"]] = Registry("method", plugins="ltcompress.methods")


@dataclass(frozen=True)
class MethodInfo:
    name: str
    summary: str
    source: str
    status: str  # "exact" (follows its source) or "reading" (our reading of an unread source)
    reading: str = ""  # for a reading: which of our readings the defaults put in force, and where it is measured

    @property
    def distills(self) -> bool:
        """Whether the method needs a teacher: its class's own `uses_teacher` (one fact, declared by the method;
        asking loads the class)."""
        return bool(METHODS.get(self.name).uses_teacher)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "distills": self.distills}


def register_method(
    name: str, target: Any, *, summary: str, source: str, status: str = "exact", reading: str = ""
) -> None:
    """Register a method class (or a lazy ``"module:Class"`` string) under `name`. A reading says which of our
    readings its defaults put in force (`reading`), so a report can tell two readings of one name apart."""
    if status not in ("exact", "reading"):
        raise ValueError("status must be 'exact' or 'reading'")
    if (status == "reading") != bool(reading):
        raise ValueError("a reading (and only a reading) names the reading in force: pass reading=...")
    METHODS.register(
        name, target, lazy=isinstance(target, str), info=MethodInfo(name, summary, source, status, reading)
    )


def method_info(name: str) -> MethodInfo:
    info: MethodInfo = METHODS.entry(name).meta["info"]
    return info


def list_methods() -> list[MethodInfo]:
    return [method_info(n) for n in METHODS.names()]


register_method(
    "ce",
    "ltcompress.methods.ce:CE",
    summary="Cross-entropy on the labels; no teacher (baseline, and the default teacher loss)",
    source="-",
)
register_method(
    "bsce",
    "ltcompress.methods.bsce:BSCE",
    summary="Balanced Softmax: CE on logits shifted by log class counts; predicts with raw logits",
    source="Ren et al., NeurIPS 2020 (official code)",
)
register_method(
    "la",
    "ltcompress.methods.la:LA",
    summary="Logit adjustment: CE on logits shifted by tau * log class prior (tau = 1 equals bsce)",
    source="Menon et al., ICLR 2021 (paper formula)",
)
register_method(
    "ldam_drw",
    "ltcompress.methods.ldam_drw:LDAMDRW",
    summary="LDAM-DRW: label-distribution-aware margins on a cosine classifier, deferred effective-number re-weighting",
    source="Cao et al., NeurIPS 2019 (official code)",
)
register_method(
    "kd",
    "ltcompress.methods.kd:KD",
    summary="Hinton knowledge distillation: CE plus T^2-scaled KL to the softened teacher",
    source="Hinton et al. 2015; defaults from mdistiller (CIFAR)",
)
register_method(
    "dkd",
    "ltcompress.methods.dkd:DKD",
    summary="Decoupled KD: CE plus separately weighted target-class (TCKD) and non-target (NCKD) KL",
    source="Zhao et al., CVPR 2022 (mdistiller DKD.py)",
)
register_method(
    "bkd",
    "ltcompress.methods.bkd:BKD",
    summary="Balanced KD: CE plus KL to a teacher distribution re-weighted per class by effective-number weights",
    source="Zhang et al., Neurocomputing 2023 (authors' code losses.py / train_student.py)",
)
register_method(
    "dive",
    "ltcompress.methods.dive:DiVE",
    summary="Distilling Virtual Examples: Balanced Softmax CE plus KL to a power-flattened Balanced Softmax teacher",
    source="He, Wu, Wei, ICCV 2021 (paper equation)",
)
register_method(
    "rekd",
    "ltcompress.methods.rekd:ReKD",
    status="reading",
    summary="ReKD (reading): CE plus KL within each sample's top-K classes and within the rest",
    source="Xu et al., IEEE TCSVT 2023, doi 10.1109/TCSVT.2023.3325814 (paper unread; follows the "
    "public code under this name)",
    reading="the public code's losses (docs/methods.md)",
)
register_method(
    "krdistill",
    "ltcompress.methods.krdistill:KRDistill",
    status="reading",
    summary="KRDistill (reading): KD to teacher logits with the label prior removed and the true "
    "class ranked first for tail samples; optional cosine matching of prototype-rectified "
    "teacher features",
    source="Huang et al., arXiv 2409.07694 (abstract only; our reading)",
    reading="second reading; see docs/methods.md",
)
register_method(
    "ltkd",
    "ltcompress.methods.ltkd:LTKD",
    status="reading",
    summary="LTKD (reading): CE plus KD split over shot groups: KL to prior-removed teacher group "
    "masses plus within-group KL with every group weighted equally",
    source="Kim, CVPR 2026, arXiv 2506.18496 (abstract only; our reading)",
    reading="first reading; see docs/methods.md",
)
