"""GAG injection (the GAG paper's Stage III and inference): knowledge crosses from the expert to a
frozen base through S latent slots.

modules.py   LayerMixer, GatedResidualProjector, SemanticHead, AttentionSlotPooler
injector.py  Injector = (pooler) + mixer + projector (+ semantic head); safetensors + JSON
base.py      InjectedBase: base + `<GAG>` placeholders, embeddings overwritten, generation
losses.py    L_nll, L_sem, L_div
config.py    `gag_stage3` config;  trainer.py: Stage III (alignment phase + domain phase)
stage3.py    Stage III then GAG scoring as one resumable run (`train_and_score`)
"""
