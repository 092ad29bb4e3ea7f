"""The parameter-updating methods: adapters trained on frozen models.

    layers.py   finding target modules, reversible module swapping, merged inference
    training.py the training loop (answer-token loss, Adam, seeded batches)
    base.py     `AdapterMethod`: training data, inference, persistence (needs peft)
    lora.py     LoRA through PEFT (``lora``, presets ``lora_source``, ``lora_target_dev``)
    kasa.py     KaSA's maths and the method (``kasa``, ``kasa_source``, ``kasa_target_dev``)

The methods need the ``adapters`` extra (``pip install "castlib[adapters]"``, for peft) and are
imported on first use through `castlib.methods.registry.LAZY`; this package imports nothing.
"""
