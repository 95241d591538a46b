"""What `kinject demo` runs: the engine and the recipes, apart from the library.

engine.py   the stage registry (`@stage`), `DemoContext`, the side lane, per-domain job slots,
            stage timings and the `kinject demo` command
tiny/       the tiny recipe: the whole pipeline on the embedded tiny world, one module per stage
smollm2.py  the real-model recipe (`kinject demo --preset smollm2`): the tiny recipe's private
            side with SmolLM2-135M-Instruct as the frozen base

A recipe imports the library (`kinject.<pkg>`); no library module imports a recipe.
"""
