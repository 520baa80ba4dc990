"""What an ARM expression is evaluated against: the deployment (where, with which parameter values) and the
template's scope (declarations, variables, copy indexes), with the bounds every evaluation keeps."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.config import arm_functions
from proxy.model import DEFAULT_RESOURCE_GROUP, DEFAULT_SUBSCRIPTION

MAX_NESTING = 32  # function calls inside function calls in one expression
MAX_RESULT_CHARS = arm_functions.MAX_CHARS  # one evaluated string: variables that concat each other would double
MAX_NUMBER_DIGITS = 18


class ExpressionError(ValueError):
    pass


class _Skipped:
    """The value of an ``if()`` branch that is not taken: parsed for its shape, never evaluated."""


SKIPPED = _Skipped()


@dataclass(frozen=True)
class Deployment:
    """What ARM learns when a template is deployed, not from the template: where, and the parameter values."""

    subscription_id: str = DEFAULT_SUBSCRIPTION
    resource_group: str = DEFAULT_RESOURCE_GROUP
    location: str = "local"
    parameters: Mapping[str, Any] = field(default_factory=dict)  # name -> value, as a parameters file gives them
    name: str = "nsp-proxy"  # deployment().name: the top-level deployment's, else the nested deployment resource's


@dataclass(frozen=True)
class Scope:
    parameters: dict[str, Any]  # the template's declarations (type, defaultValue, ...)
    variables: dict[str, Any]
    deployment: Deployment = field(default_factory=Deployment)
    copy_index: Mapping[str, int] = field(default_factory=dict)  # copy loop name -> index ("" = the resource's)
    # Variables and parameter defaults evaluated so far (each once, so chains cost linear time) and those being
    # evaluated now (one that refers to itself, directly or not, is a cycle ARM refuses too).
    values: dict[tuple[str, str], Any] = field(default_factory=dict, compare=False)
    pending: set[tuple[str, str]] = field(default_factory=set, compare=False)
