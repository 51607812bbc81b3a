"""The DnS networks (students, selector) and the ViSiL teacher head as Flax modules."""
from dns_jax.models.selector import SelectorNetwork
from dns_jax.models.students import CoarseGrainedStudent, FineGrainedStudent
from dns_jax.models.teacher import ViSiLHead

__all__ = ["CoarseGrainedStudent", "FineGrainedStudent", "SelectorNetwork", "ViSiLHead"]
