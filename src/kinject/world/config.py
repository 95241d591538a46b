"""Configs of `world build` (kind `world`) and `world pretrain` (kind `foundation`)."""

from __future__ import annotations

from pydantic import Field

from kinject.config import StageConfig, StrictModel, register_config


class PrivateSizes(StrictModel):
    entities: int = 150  # per private entity type
    dapt_paraphrases: int = 6  # knowledge-base documents per entity (each states every fact)
    dev_fraction: float = Field(0.2, gt=0, lt=1)


class PublicSizes(StrictModel):
    entities: dict[str, int] = Field(default_factory=lambda: {"country": 12, "city": 60, "person": 120, "organisation": 50})
    popular_fraction: dict[str, float] = Field(default_factory=lambda: {"country": 1.0})
    default_popular_fraction: float = 0.4
    statement_docs: int = 40  # paraphrased statement documents per popular entity in pretraining
    closed_book_repeats: int = 20  # closed-book QA copies per popular fact and seen wording
    passage_repeats: int = 4  # copies of each popular entity's wiki passage in pretraining


class WikiSizes(StrictModel):
    two_hop: int = 400
    test_fraction: float = Field(0.3, gt=0, lt=1)


class FreshSizes(StrictModel):
    reading_examples: int = 40000  # reading comprehension examples in pretraining (fresh facts)
    reading_dev: int = 500
    private_style_share: float = 0.6  # share of reading examples styled like the private domains
    distractors: tuple[int, int] = (1, 4)
    same_entity_distractor_share: float = 0.6
    align_train: int = 20000
    align_dev: int = 500
    pool_size: int = 4000  # fresh names drawn per name generator


class MixedSizes(StrictModel):
    offline_per_domain: int = 400
    online_per_domain: int = 150
    # router-only offline question wordings, `<dir>/<domain>.yaml` (dir relative to domains_dir;
    # null: none); see kinject.world.mixed
    offline_wordings: str | None = "offline_wordings"


@register_config
class WorldConfig(StageConfig):
    kind: str = "world"
    preset: str = "tiny"
    domains_dir: str = "domains"  # relative to the config file
    private_domains: list[str] = Field(default_factory=lambda: ["materials", "adjuvant"])
    public_domain: str = "general"
    private: PrivateSizes = PrivateSizes()
    public: PublicSizes = PublicSizes()
    wiki: WikiSizes = WikiSizes()
    fresh: FreshSizes = FreshSizes()
    mixed: MixedSizes = MixedSizes()


class ModelShape(StrictModel):
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int | None = None
    intermediate: int | None = None
    max_positions: int = 512


class TrainSettings(StrictModel):
    renamed = {"lr": "learning_rate"}

    max_steps: int = 2000
    time_budget_min: float = 15.0  # the LR schedule ends at whichever comes first
    batch_size: int = 32
    seq_len: int = 256
    learning_rate: float = 3e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    log_every: int = 25
    eval_every: int = 0  # quick EM on a dev sample every N steps (0: only at the end)

    def hash_dump(self) -> dict:
        """These settings as the inputs hashes see them: `learning_rate` under its older name
        `lr`, the key the hashes of pretrained foundations (the shipped tiny foundation among
        them) were made with, so that `kinject world pretrain` still finds them complete."""
        data = self.model_dump(mode="json")
        data["lr"] = data.pop("learning_rate")
        return data


@register_config
class FoundationConfig(StageConfig):
    kind: str = "foundation"
    preset: str = "tiny"
    vocab_size: int = 2048
    threads: int = 1  # torch threads per training process
    parallel: bool = True  # train base and expert init at the same time, one process each
    device: str = "auto"
    save_dtype: str = "bfloat16"
    answer_only_loss: bool = True  # chat rows: loss on the assistant answer only
    base: ModelShape = ModelShape()
    base_train: TrainSettings = TrainSettings()
    expert: ModelShape = ModelShape(hidden=96, layers=3, heads=4)
    expert_train: TrainSettings = TrainSettings(time_budget_min=5.0)
    eval_sample: int = 200

    def hash_dump(self) -> dict:
        """The config as the inputs hashes see it (`TrainSettings.hash_dump` for both schedules)."""
        return {**self.model_dump(mode="json"), "base_train": self.base_train.hash_dump(),
                "expert_train": self.expert_train.hash_dump()}
