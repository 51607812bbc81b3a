"""The DnS networks (students, selector), the ViSiL teacher head and S2VS as Flax modules."""
from dns_jax.models.s2vs import S2VS
from dns_jax.models.selector import SelectorNetwork
from dns_jax.models.students import CoarseGrainedStudent, FineGrainedStudent
from dns_jax.models.teacher import ViSiLHead

__all__ = ["CoarseGrainedStudent", "FineGrainedStudent", "S2VS", "SelectorNetwork", "ViSiLHead"]
