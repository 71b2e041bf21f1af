"""Every distillation method's card, one module each, in the registry :data:`METHODS`.

The registry holds cards, not implementations, so that validating a config, resolving a method's
settings, planning a pipeline or parsing the Snakefile never imports torch (about 3 s on a laptop);
:func:`tgdd.methods.load_method` imports the implementation when a method actually runs. A plugin
(``TGDD_PLUGINS``, :mod:`tgdd.plugins`) adds its card here exactly as a built-in one is added.
"""

from __future__ import annotations

from tgdd.cards.base import MethodCard
from tgdd.cards.dance import DANCE
from tgdd.cards.datadam import DATADAM
from tgdd.cards.dm import DM
from tgdd.cards.ftd import FTD
from tgdd.cards.herding import HERDING
from tgdd.cards.idm import IDM
from tgdd.cards.m3d import M3D
from tgdd.cards.mtt import MTT
from tgdd.cards.selection import RANDOM
from tgdd.cards.tgdd import TGDD
from tgdd.registry import Registry

METHODS: Registry[MethodCard] = Registry("method")
# In this order: the config's distill sections, its schema and the key table follow it.
METHODS.add("tgdd", TGDD)
METHODS.add("dm", DM)
METHODS.add("dance", DANCE)
METHODS.add("random", RANDOM)
METHODS.add("herding", HERDING)
METHODS.add("datadam", DATADAM)
METHODS.add("idm", IDM)
METHODS.add("mtt", MTT)
METHODS.add("ftd", FTD)
METHODS.add("m3d", M3D)
