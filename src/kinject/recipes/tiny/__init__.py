"""The tiny recipe: the whole pipeline on the embedded tiny world (`kinject demo`, `make demo`).

One module per stage (`STAGE_MODULES`); importing it registers its stage with `@stage`. In run
order (lane `side`: run in the background while the main lane trains, see `kinject.recipes.engine`):

| order | stage | lane |
|---|---|---|
| 0 | foundation | main |
| 10 | world | main |
| 30 | retrieval | main |
| 40 | ppr | side |
| 50 | expert | main |
| 60 | memory | main |
| 70 | gag | main |
| 75 | baselines | side |
| 80 | grip | side |
| 100 | eval | main |
"""

from kinject.recipes.tiny import (
    baselines,
    eval,
    expert,
    foundation,
    gag,
    grip,
    memory,
    ppr,
    retrieval,
    world,
)

# the stage list: importing a module registers its stage (`@stage`), run by its order
STAGE_MODULES = (foundation, world, retrieval, ppr, expert, memory, gag, baselines, grip, eval)
