"""Integrations with other libraries: TRL video DPO (:mod:`.trl_video`), the lmms-eval model wrapper
(:mod:`.lmms_eval`, registered through the ``lmms_eval.models`` entry point; it imports lmms-eval lazily).

Submodules import their library on import; nothing is imported here.
"""
