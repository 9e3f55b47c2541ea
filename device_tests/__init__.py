"""The device suite, shipped with the SDK: ``python -m pocketrec.device_tests [BUNDLE ...]``.

Runs bundles on every LiteRT accelerator present (CPU, GPU, NPU) and reports golden
parity, top-10 agreement with the CPU, delegation, load time and latency as JSON; see
README.md beside this file. The pytest tests here run in ``make test``.
"""
