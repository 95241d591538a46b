"""The synthetic private-knowledge world: domain specs, generator, tokenizer and foundation models.

- `spec`      domain specs (YAML) -> validated models; errors name the file and key
- `names`     pronounceable, collision-free fictional names
- `facts`     entities and their attribute values (numeric, categorical, name, relation)
- `render`    fast chat rendering through the real tokenizer chat template
- `private`   private-domain files: DAPT corpus, QA splits
- `public`    general domain + wiki passages, 1-hop and 2-hop questions
- `fresh`     fresh random facts: reading-comprehension examples and alignment items
- `build`     `kinject world build`: everything above into one directory
- `checks`    separation/split guarantees and `world stats`
- `pretrain`  `kinject world pretrain`: tokenizer + base and expert-init pretraining
- `quality`   quality bars of the foundation models
"""
