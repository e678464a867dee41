"""Start-up plumbing: how every interpreter of a run comes to know Pangu, in order.

A run is many interpreters. Each learns about Pangu through one of four hooks, installed by the
package install or by the driver; all of them end in ``rlinf_pangu.register()`` (or its start-up
subset), the one registration call.

====  ======================================  ==========================================  ====================================================
step  interpreter                             hook, installed by                          what it does
====  ======================================  ==========================================  ====================================================
1     every one (driver, Ray worker, SGLang)  ``rlinf_pangu_startup.pth`` in               :mod:`.site`: the ``megatron.legacy`` finder and the
                                              site-packages, by ``pip install [-e] .``     ``rlinf.train`` finder (:mod:`.rlinf_train`)
2     the driver (``python -m rlinf.train``)  ``rlinf.train`` -> :mod:`.rlinf_train_main`  ``rlinf_pangu.train.main``: compose YAML, check, then
                                                                                          ``register()`` and export steps 3 and 4 to children
3     each Ray worker                         ``RLINF_EXT_MODULE=rlinf_pangu``, set by     RLinf's ``Worker.__new__`` imports it and calls
                                              the driver                                  ``register()``
4     each SGLang process (scheduler,         ``PYTHONPATH`` += ``startup/_site``, by      ``_site/sitecustomize.py`` -> :func:`.children.install`:
      detokenizer, ``sglang.launch_server``)  :func:`.register.register_sglang`            arm the start-up patches (and, in CPU mode, the CPU
                                              (``python -m rlinf_pangu.serve`` too)        redirects); ``register(rlinf=False)`` once SGLang
                                                                                          loads its config helpers
5     SGLang resolving the model class        ``SGLANG_EXTERNAL_MODEL_PACKAGE=             SGLang imports :mod:`rlinf_pangu.sglang_ext`, which
                                              rlinf_pangu.sglang_ext``, same as 4          serves ``PanguEmbeddedForCausalLM``
====  ======================================  ==========================================  ====================================================

``register()`` itself (``rlinf_pangu/__init__.py``) registers with transformers, then
:func:`.register.register_rlinf` (apply every patch, the ``pangu`` model type, the reward, the
sync convertor) and :func:`.register.register_sglang` (steps 4 and 5 for children).
"""
