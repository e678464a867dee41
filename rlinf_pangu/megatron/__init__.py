"""openPangu-Embedded on Megatron-core through RLinf's ``MegatronModelManager``.

* :mod:`.config` — TransformerConfig / GPTModel arguments from the HF config, and the checks
  that an RLinf config (in the driver, before any process group) and a built TransformerConfig
  describe Pangu.
* :mod:`.spec` — the layer spec with the o_proj bias (megatron-core modules; TE when installed).
* :mod:`.provider` — RLinf's ``get_specs`` / ``model_provider_func`` replacements (actor and
  critic), installed by ``rlinf_pangu.patches.rlinf``.

Submodules import megatron-core; this package module does not, so ``import rlinf_pangu.megatron``
stays cheap.
"""
