"""Checking a plug-in against the Protocols of its kind, once, when it is plugged in.

Each kind of model declares two Protocols: the methods a model of the kind offers (``Detector``,
``MLLM``, ``TargetExtractor``) and the optional ones it may add (``DetectorExtras``, ...). A
method's parameters without a default are passed by position, the others by keyword, so a
plug-in's method must accept that call; ``check_plugin`` says in one line what the settings need
and it lacks, or what it has but could not be called so, before any query reaches it.
"""

from __future__ import annotations

import inspect
from typing import Any, Sequence

from .errors import UserInputError


def protocol_methods(protocol: type) -> dict[str, inspect.Signature]:
    """The methods ``protocol`` declares itself, with their signatures (``self`` left out)."""
    methods = {}
    for name, member in vars(protocol).items():
        if not name.startswith("_") and inspect.isfunction(member):
            signature = inspect.signature(member)
            methods[name] = signature.replace(parameters=list(signature.parameters.values())[1:])
    return methods


def check_plugin(plugin: Any, kind: str, protocols: Sequence[type], needed: Sequence[tuple[str, ...]] = (),
                 why: str = "") -> None:
    """``UserInputError`` for a method of ``protocols`` that ``plugin`` has but that could not be
    called as the agent calls it, or, for each tuple of ``needed`` (alternatives), when it has
    none of them (``why``: what needs it, for the message)."""
    declared = {name: signature for protocol in protocols for name, signature in protocol_methods(protocol).items()}
    name_of = type(plugin).__name__
    for name, signature in declared.items():
        method = getattr(plugin, name, None)
        if method is None:
            continue
        if not callable(method):
            raise UserInputError(f"the {kind} plug-in {name_of}'s {name} is not a method")
        try:
            accepts = inspect.signature(method)
        except (TypeError, ValueError):  # a builtin or C callable: nothing to check
            continue
        positional = [p for p in signature.parameters.values() if p.default is inspect.Parameter.empty]
        keywords = [p for p in signature.parameters.values() if p.default is not inspect.Parameter.empty]
        try:
            accepts.bind(*(None for _ in positional), **{p.name: None for p in keywords})
        except TypeError as error:
            raise UserInputError(f"the {kind} plug-in {name_of}'s {name} cannot be called as "
                                 f"{name}{_shown(signature)}: {error}") from None
    if not isinstance(getattr(plugin, "thread_safe", False), bool):  # True lets threads in at once
        raise UserInputError(f"the {kind} plug-in {name_of}'s thread_safe must be True or False")
    for alternatives in needed:
        if not any(callable(getattr(plugin, name, None)) for name in alternatives):
            wanted = " or ".join(f"{name}{_shown(declared[name])}" for name in alternatives)
            raise UserInputError(f"the {kind} plug-in {name_of} has no {wanted} method{', which ' + why if why else ''}"
                                 f" ({protocols[0].__module__}.{protocols[0].__name__})")


def _shown(signature: inspect.Signature) -> str:
    return "(" + ", ".join(p.name if p.default is inspect.Parameter.empty else f"{p.name}=..."
                           for p in signature.parameters.values()) + ")"
