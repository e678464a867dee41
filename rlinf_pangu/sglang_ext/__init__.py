"""SGLang external model package for openPangu-Embedded.

``rlinf_pangu.register()`` sets ``SGLANG_EXTERNAL_MODEL_PACKAGE=rlinf_pangu.sglang_ext``; SGLang
then imports every module of this package in each process that resolves a model class (its
scheduler processes) and registers each module's ``EntryClass`` under the class name, so
``"architectures": ["PanguEmbeddedForCausalLM"]`` in an official config.json selects
:class:`~rlinf_pangu.sglang_ext.pangu_embedded.PanguEmbeddedForCausalLM`.

Importing the package registers Pangu with transformers (config, tokenizer) in that process,
so the ``PanguEmbedded`` config loads without the official remote code. (The start-up hook in
:mod:`rlinf_pangu.startup.children` already did so before SGLang parsed the config; this is the
guarantee for a process that got the package some other way.)
"""

import rlinf_pangu as _rlinf_pangu

_rlinf_pangu.register(rlinf=False)
