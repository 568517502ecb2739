"""The recipe: the validated description of one run (YAML + `--set key=value` overrides).

`task:` and `method:` are checked against the registries (tuneline.tasks.TASKS, the methods'
METHODS), so a plug-in task or method is a valid value once registered; its own options
section joins the recipe with `add_section`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from .errors import UserError
from .evaluation import direction
from .tasks import OBJECTIVES, SFT, TASKS, objective_task
from .training.methods import METHODS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    train: str = Field(description="training rows: .jsonl, .csv, .parquet or a datasets folder")
    validation: Optional[str] = Field(None, description="split from train (stratified, seeded) when absent")
    test: Optional[str] = Field(None, description="split from train (stratified, seeded) when absent")
    text_column: Optional[str] = Field(None, description="input column; auto-detected when absent")
    label_column: Optional[str] = Field(None, description="label column (classify); auto-detected when absent")
    format: Literal["auto", "messages", "prompt_completion", "alpaca", "sharegpt", "pairs", "openai_preference",
                    "judgements", "prompts"] = Field(
        "auto", description="row format for the generate task: chats for sft; pairs (prompt/chosen/rejected) or "
        "openai_preference for dpo/simpo/orpo; judgements (prompt/completion/label) for kto; prompts for grpo"
    )
    validation_size: float = Field(0.1, gt=0, lt=0.5, description="share of train held out when no validation file")
    test_size: float = Field(0.1, gt=0, lt=0.5, description="share of train held out when no test file")
    max_rows: Optional[int] = Field(None, gt=0, description="use only the first N training rows")
    streaming: Union[Literal["auto"], bool] = Field(
        "auto", description="train from a memory-mapped token cache instead of rows in memory; auto: when the "
                            "train file is over 256 MiB or 200,000 rows")
    num_proc: Optional[int] = Field(None, ge=1, description="processes that tokenise a streamed train file; "
                                    "default: the CPU cores but one (up to 8) for files over 64 MiB with 4+ cores, else 1")

    @field_validator("streaming", mode="before")
    @classmethod
    def _streaming(cls, v):
        # one clear message instead of pydantic's one line per member of the union
        if v == "auto" or isinstance(v, bool) or v in ("true", "false"):
            return v
        raise ValueError(f"{v!r} is not a streaming mode; use auto, true or false")


class EarlyStoppingConfig(_Strict):
    metric: str = Field("loss", description="validation metric to watch: loss, accuracy, macro_f1, ...")
    mode: Optional[Literal["min", "max"]] = Field(None, description="min for loss-like metrics, max otherwise")
    patience: int = Field(3, ge=1, description="evaluations without improvement before stopping")
    min_delta: float = Field(0.0, ge=0)

    def resolved_mode(self) -> str:
        if self.mode:
            return self.mode
        return direction.mode(self.metric)


class ReplayConfig(_Strict):
    data: str = Field(description="general text (.txt paragraphs, or rows with a text column) or chat / "
                      "instruction rows, mixed into training against forgetting (task generate)")
    fraction: float = Field(0.1, gt=0, lt=1, description="share of the training rows that are replay rows")


class DivergenceConfig(_Strict):
    enabled: bool = Field(True, description="stop on a non-finite loss or gradient, or a loss far above its minimum")
    loss_ratio: float = Field(3.0, gt=1, description="stop when the smoothed loss exceeds this many times its "
                              "running minimum and the starting loss, or this many times the starting loss")
    min_steps: int = Field(10, ge=1, description="steps before the loss-rise check starts (warm-up noise)")


class TrainConfig(_Strict):
    epochs: float = Field(3.0, gt=0)
    max_steps: Optional[int] = Field(None, gt=0, description="optimizer steps; overrides epochs")
    lr: Optional[float] = Field(None, gt=0, description="default by method: " + ", ".join(
        f"{m.name} {m.default_lr:.1e}".replace(".0e", "e").replace("e-0", "e-") for m in METHODS.values())
        + "; a tenth of that for the objectives other than sft")
    batch_size: int = Field(16, ge=1)
    batch_tokens: Optional[int] = Field(
        None, ge=8, description="cut each epoch into batches by tokens instead of rows: rows are gathered while "
        "their real (unpadded) tokens stay within this (batch_size then counts for evaluation only). Steps of "
        "even work: on a GPU, 16384-32768 with memory.packing keeps the device busy")
    eval_batch_size: Optional[int] = Field(None, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(128, ge=8)
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    max_grad_norm: Optional[float] = Field(1.0, gt=0)
    dropout: Optional[float] = Field(None, ge=0, lt=1, description="override the model's dropout rates")
    early_stopping: Optional[EarlyStoppingConfig] = None
    eval_every: Optional[int] = Field(None, ge=1, description="evaluate every N optimizer steps (and at each epoch end)")
    save_every: Optional[int] = Field(None, ge=1, description="checkpoint every N steps; default: at each evaluation")
    log_every: int = Field(10, ge=1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    compile: bool = Field(False, description="compile each transformer block with torch.compile for the training "
                          "steps (fused kernels: fewer launches per step on a GPU); the first steps pay the compile. "
                          "Not under sharding: fsdp")
    seed: int = 42
    group_by_length: bool = Field(True, description="batch rows of similar length together (less padding)")
    num_threads: Optional[int] = Field(None, ge=1, description="CPU threads; default: the physical cores not busy with other work")
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=list, description="experiment trackers (optional extras: pip install tuneline[NAME])")
    divergence: DivergenceConfig = DivergenceConfig()
    sharding: Literal["none", "fsdp"] = Field(
        "none", description="fsdp: shard weights, gradients and optimizer state over the processes of --nproc / "
        "torchrun (PyTorch FSDP2); none: every process holds the whole model")
    replay: Optional[ReplayConfig] = None
    neftune_alpha: Optional[float] = Field(None, gt=0, description="NEFTune: uniform noise of this scale on the input "
                                           "embeddings while training (5 is the paper's usual value), reported to "
                                           "give fuller answers after instruction tuning")

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_tracker(cls, v):
        return [v] if isinstance(v, str) else ([] if v is None else v)  # `report_to: mlflow` is a list of one


class LoraOptions(_Strict):
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: Optional[list[str]] = Field(None, description="default per architecture")


class FreezeOptions(_Strict):
    train_layers: int = Field(2, ge=0, description="top transformer layers trained besides the head")


class IA3Options(_Strict):
    target_modules: Optional[list[str]] = None
    feedforward_modules: Optional[list[str]] = None


class PromptOptions(_Strict):
    num_virtual_tokens: int = Field(20, ge=1)


class GenerateOptions(_Strict):
    loss_on: Literal["all_assistant", "last_assistant"] = "all_assistant"
    truncation: Literal["middle", "left", "drop"] = Field(
        "middle", description="too-long rows: cut the middle (keeps the system prompt, the start of the first turn "
        "and the answer), cut from the left (the oldest history), or drop them")
    max_new_tokens: int = Field(128, ge=1)
    temperature: float = Field(0.0, ge=0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0, description="above 1 makes tokens already in the text less likely")
    no_repeat_ngram_size: int = Field(0, ge=0, description="never repeat an n-gram of this many tokens (0 = off)")
    system_prompt: Optional[str] = None


# -- objectives other than sft (task generate): the defaults of the papers and TRL -------------
class DPOOptions(_Strict):
    """Direct Preference Optimization (Rafailov et al. 2023); TRL DPOConfig's defaults."""
    beta: float = Field(0.1, gt=0, description="how far the model may move from the reference: higher keeps it closer")
    loss_type: Literal["sigmoid", "ipo", "hinge"] = Field(
        "sigmoid", description="sigmoid: the paper's; ipo: Azar et al. 2023 (squared, on mean log-probs); hinge: SLiC")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="conservative DPO: the share of pairs assumed flipped")
    sft_weight: float = Field(0.0, ge=0, description="add this times the chosen answer's mean NLL (RPO, Pang et al. "
                              "2024; TRL's rpo_alpha): keeps the chosen answers likely, not only likelier than the "
                              "rejected; 0 = off")
    precompute_reference: bool = Field(
        True, description="reference log-probs computed once before training (one pass, no second model); "
        "false: every step, through the base with the adapter off (adapters) or a frozen copy (full tuning)")


class SimPOOptions(_Strict):
    """SimPO (Meng et al. 2024): length-normalised log-probs, a target margin, no reference model."""
    beta: float = Field(2.0, gt=0, description="reward scale (the paper: 2.0-2.5)")
    gamma: float = Field(1.0, ge=0, description="target reward margin (the paper: gamma/beta about 0.5)")
    sft_weight: float = Field(0.0, ge=0, description="add this times the chosen answers' NLL (CPO-SimPO); 0 = off")


class ORPOOptions(_Strict):
    """ORPO (Hong et al. 2024): NLL of the chosen answer plus an odds-ratio term; no reference model."""
    beta: float = Field(0.1, gt=0, description="weight of the odds-ratio term (the paper's lambda; TRL: 0.1)")


class KTOOptions(_Strict):
    """KTO (Ethayarajh et al. 2024): unpaired desirable / undesirable answers; TRL KTOConfig's defaults."""
    beta: float = Field(0.1, gt=0)
    desirable_weight: float = Field(1.0, gt=0, description="raise it when desirable rows are the fewer "
                                    "(the paper: keep weight x count within 1:1 to 4:3 of the other side)")
    undesirable_weight: float = Field(1.0, gt=0)
    precompute_reference: bool = Field(True, description="as dpo.precompute_reference")


class GRPOOptions(_Strict):
    """GRPO (Shao et al. 2024) with the current practice: no KL term by default (DAPO, Dr. GRPO), token-level
    loss normalisation, one optimisation pass per batch of generations (TRL's num_iterations=1)."""
    num_generations: int = Field(8, ge=2, description="answers sampled per prompt (the group)")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the group's answers")
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(32, ge=1, description="answer length cap while training")
    epsilon: float = Field(0.2, gt=0, lt=1, description="clip range of the probability ratio")
    beta: float = Field(0.0, ge=0, description="KL penalty to the reference (0 = off, as DAPO / Dr. GRPO)")
    scale_rewards: bool = Field(True, description="divide advantages by the group's reward spread (false: Dr. GRPO)")


class ForgettingOptions(_Strict):
    enabled: bool = Field(True, description="measured for every run on a causal language model")
    reference: Optional[str] = Field(None, description="general text file (.txt); default: tuneline's own sample")
    max_tokens: int = Field(16384, ge=64, description="cap on reference tokens read (cost: 2 forward passes)")
    window: int = Field(512, ge=16, description="tokens per scored window")


class EvalOptions(_Strict):
    batch_size: Optional[int] = Field(None, ge=1)
    max_samples: Optional[int] = Field(None, ge=1, description="cap on test rows evaluated (generation is slow)")
    forgetting: ForgettingOptions = ForgettingOptions()
    slices: list[str] = Field(default_factory=list, description="test columns to break the metrics down by")
    counterfactuals: Optional[Union[bool, str]] = Field(
        None, description="swap gendered terms and names (true), or the pairs of a file (one 'a,b' per line); "
                          "default: on for classify, off for generate (it generates twice per row)")
    counterfactual_samples: int = Field(50, ge=1, description="cap on rows generated twice (generate task)")
    headline: Optional[list[str]] = Field(
        None, description="test metrics the verdict (tuned vs baseline) rests on; default: the task's choice "
        "(classify: accuracy; generate: exact_match for short label-like answers, else loss, rougeL and "
        "chrf_per_answer)")

    @field_validator("headline", mode="before")
    @classmethod
    def _one_headline(cls, v):
        return [v] if isinstance(v, str) else v  # `headline: rougeL` is a list of one


class SearchParam(_Strict):
    """One searched key: a range (low/high, optional log scale or step) or a list of choices."""

    low: Optional[float | int] = None
    high: Optional[float | int] = None
    log: Optional[bool] = Field(None, description="sample on a log scale; default true for learning rates")
    step: Optional[float | int] = Field(None, gt=0, description="grid step inside the range")
    choices: Optional[list[Any]] = Field(None, min_length=1, description="values to pick from (any type)")

    @model_validator(mode="after")
    def _range_or_choices(self) -> "SearchParam":
        has_range = self.low is not None or self.high is not None
        if self.choices is not None:
            if has_range or self.log or self.step is not None:
                raise ValueError("give either choices, or low/high (with log or step), not both")
        elif self.low is None or self.high is None:
            raise ValueError("give low and high (a range) or choices (a list)")
        elif self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        elif self.log and self.low <= 0:
            raise ValueError("a log-scale range needs low > 0")
        elif self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        return self


class SearchConfig(_Strict):
    """Hyperparameter search (`tuneline tune`); `tuneline train` ignores it."""

    space: dict[str, SearchParam] = Field(min_length=1, description="recipe key (e.g. train.lr) -> range or choices")
    metric: Optional[str] = Field(None, description="validation metric to optimise; default: the one training watches")
    direction: Optional[Literal["maximize", "minimize"]] = Field(None, description="default: minimize loss-like metrics")
    trials: int = Field(20, ge=1, description="trials in the study (tune --trials overrides)")
    pruner: Literal["median", "hyperband", "none"] = Field("median", description="stops weak trials early")
    evals_per_trial: int = Field(4, ge=1, description="validation checks per trial the pruner judges at")
    startup_trials: int = Field(4, ge=0, description="random trials before TPE and before any pruning")
    seed: Optional[int] = Field(None, description="sampler seed; default train.seed")
    keep_models: Literal["best", "all"] = Field("best", description="best: delete other trials' weights")


class MlflowOptions(_Strict):
    tracking_uri: Optional[str] = Field(None, description="default: $MLFLOW_TRACKING_URI, else a file store ./mlruns")
    experiment: str = "tuneline"


class WandbOptions(_Strict):
    project: str = "tuneline"
    entity: Optional[str] = None
    mode: Optional[Literal["offline", "online"]] = Field(None, description="default: $WANDB_MODE, else offline")


class TrackerOptions(_Strict):
    run_name: Optional[str] = Field(None, description="name shown in the trackers; default: the run folder's name")
    mlflow: MlflowOptions = MlflowOptions()
    wandb: WandbOptions = WandbOptions()


class DriftOptions(_Strict):
    """Thresholds for comparing live inputs with the training data (tuneline serve / monitor)."""
    window: int = Field(500, ge=10, description="latest requests compared with the training data")
    min_requests: int = Field(30, ge=1, description="no verdict before this many requests")
    psi_warn: float = Field(0.1, gt=0, description="population stability index: warn at or above")
    psi_alert: float = Field(0.25, gt=0, description="population stability index: alert at or above")
    centroid_alert: float = Field(0.05, gt=0, le=2, description="cosine distance of mean input embeddings: alert at or above")
    confidence_drop_alert: float = Field(0.1, gt=0, le=1, description="classify: mean confidence this much below the test set's")


class RetrainOptions(_Strict):
    """How `tuneline retrain` judges a challenger against the serving champion."""
    metric: Optional[Literal["accuracy", "chrf"]] = Field(None, description="default: accuracy (classify), chrf (generate)")
    margin: float = Field(0.02, ge=0, description="the challenger must beat the champion by this much (test + feedback rows)")
    max_p_value: float = Field(0.05, gt=0, le=1, description="paired sign test over rows: the win must be this unlikely by chance")
    max_test_drop: float = Field(0.02, ge=0, description="largest loss allowed on the original test set alone")
    feedback_eval_share: float = Field(0.3, gt=0, lt=1, description="share of feedback rows, per kind, held out for judging")
    min_feedback: int = Field(5, ge=1, description="usable feedback rows needed: corrections (sft; dpo: those that "
                              "make a pair) or corrections + rated answers (kto)")
    objective: Literal["auto", "sft", "kto", "dpo"] = Field(
        "auto", description="what a chat run's challenger learns from: sft (corrections as supervised rows), kto "
        "(the original rows and thumbs-up answers as liked, thumbs-down answers as disliked, each correction as a "
        "liked and a disliked answer), dpo (each correction as a pair over the model's answer: corrections only); "
        "auto: kto once answers were rated up or down, else sft. A classifier always retrains with sft")


class MemoryOptions(_Strict):
    gradient_checkpointing: Union[Literal["auto"], bool, int] = Field(
        "auto", description="recompute transformer blocks' activations in the backward pass: much less memory, "
        "one more forward of each such block. true: every block; a number: that many; auto: as few as keep the "
        "largest piece of work within the memory there is (measured at the start: on a GPU its free memory, "
        "on a CPU only under memory.limit_gib); false: none")

    @field_validator("gradient_checkpointing", mode="before")
    @classmethod
    def _checkpointing(cls, v):
        # one clear message instead of pydantic's one line per member of the union
        if v == "auto" or isinstance(v, bool) or v in ("true", "false") or (isinstance(v, int) and v >= 0):
            return v
        raise ValueError(f"{v!r}: use auto, true, false, or a number of blocks (0 or more)")

    limit_gib: Optional[float] = Field(
        None, gt=0, description="memory the run may use, in GiB (GPU memory on a GPU, RAM on a CPU): "
        "gradient_checkpointing auto plans its activations under it. null: a GPU's free memory")
    micro_batch_tokens: Union[Literal["auto"], int, None] = Field(
        "auto", description="padded tokens per forward pass: each batch is cut into pieces under this budget and "
        "their gradients summed, the same update as the whole batch with a fraction of the activation memory. "
        "auto: 1024 on a CPU (measured as fast as the whole batch, or faster), the whole batch on a GPU; "
        "null: the whole batch")

    @field_validator("micro_batch_tokens", mode="before")
    @classmethod
    def _budget(cls, v):
        # one clear message instead of pydantic's one line per member of the union
        if v is None or v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 8):
            return v
        raise ValueError(f"{v!r} is not a token budget; use auto, null, or a whole number of 8 or more")

    packing: Union[Literal["auto"], bool] = Field(
        "auto", description="lay a batch's rows end to end in sequences of at most train.max_length tokens, "
        "attention kept inside each row, instead of padding them to the longest (the same loss; tasks and "
        "models that support it: generate with sft on Llama, Mistral, Qwen2/3). auto: on a GPU, where padding "
        "costs most; a CPU already cuts batches into length-sorted pieces")

    @field_validator("packing", mode="before")
    @classmethod
    def _packing(cls, v):
        # one clear message instead of pydantic's one line per member of the union
        if v == "auto" or isinstance(v, bool) or v in ("true", "false"):
            return v
        raise ValueError(f"{v!r}: use auto, true or false")

    def packs(self, device_type: str) -> bool:
        return device_type != "cpu" if self.packing == "auto" else self.packing

    def may_checkpoint(self, device_type: str) -> bool:
        """Whether any block may be checkpointed on this device (auto decides how many later)."""
        g = self.gradient_checkpointing
        if g == "auto":
            return device_type != "cpu" or self.limit_gib is not None
        return g is True or (g is not False and g > 0)

    def token_budget(self, device_type: str) -> int | None:
        if self.micro_batch_tokens == "auto":
            return 1024 if device_type == "cpu" else None
        return self.micro_batch_tokens


class _ObjectiveNames(dict):
    """sft and the registered objectives, read when validating (plug-ins register late)."""

    def __contains__(self, name) -> bool:
        return name == SFT or name in OBJECTIVES

    def __iter__(self):
        return iter([SFT, *OBJECTIVES])


OBJECTIVE_NAMES = _ObjectiveNames()
OBJECTIVE_LR_SCALE = 0.1  # the default learning rate of an objective other than sft, relative to the method's


def _registered(registry: dict) -> AfterValidator:
    """A name that must be a key of `registry`, read when validating (plug-ins register late)."""
    def check(name: str) -> str:
        if name not in registry:
            raise ValueError(f"unknown {name!r}; allowed: {', '.join(registry)}")
        return name

    return AfterValidator(check)


class Recipe(_Strict):
    task: Annotated[str, _registered(TASKS)]
    model: str = Field(description="catalog alias, local folder, hub id or .gguf file")
    method: Annotated[str, _registered(METHODS)] = "full"
    objective: Annotated[str, _registered(OBJECTIVE_NAMES)] = Field(
        "sft", description="how the model learns: sft (supervised), dpo, simpo, orpo (preference pairs), kto "
        "(judged answers), grpo (rewards from graders)")
    data: DataConfig
    train: TrainConfig = TrainConfig()
    lora: LoraOptions = LoraOptions()
    freeze: FreezeOptions = FreezeOptions()
    ia3: IA3Options = IA3Options()
    prompt: PromptOptions = PromptOptions()
    generate: GenerateOptions = GenerateOptions()
    dpo: DPOOptions = DPOOptions()
    simpo: SimPOOptions = SimPOOptions()
    orpo: ORPOOptions = ORPOOptions()
    kto: KTOOptions = KTOOptions()
    grpo: GRPOOptions = GRPOOptions()
    rewards: Optional[list[dict]] = Field(
        None, description="graders for grpo and the test evaluation, in OpenAI's grader shapes (string_check, "
        "text_similarity, score_model, label_model, multi, python) or tuneline's (regex, json, number)")
    eval: EvalOptions = EvalOptions()
    trackers: TrackerOptions = TrackerOptions()
    drift: DriftOptions = DriftOptions()
    retrain: RetrainOptions = RetrainOptions()
    memory: MemoryOptions = MemoryOptions()
    output: Optional[str] = Field(None, description="run folder; default runs/<recipe name>")
    trust_remote_code: bool = False
    search: Optional[SearchConfig] = Field(None, description="hyperparameter search for tuneline tune")

    @field_validator("rewards", mode="before")
    @classmethod
    def _graders(cls, v):
        from .rewards import check_specs  # no torch: graders are checked by shape only

        return None if v is None else check_specs(v)

    @model_validator(mode="after")
    def _default_lr(self) -> "Recipe":
        if self.train.lr is None:
            # Preference and reward objectives move a model already fit for the task: TRL's defaults are
            # 1e-6 for full tuning, 10-50x below supervised rates; at sft's LoRA rate KTO pushed every
            # answer down on SST-2 (benchmarks/README.md).
            scale = 1.0 if self.objective == SFT else OBJECTIVE_LR_SCALE
            self.train.lr = METHODS[self.method].default_lr * scale
        return self

    @model_validator(mode="after")
    def _objective_fits(self) -> "Recipe":
        owner = objective_task(self.objective)
        if owner is not None and owner != self.task:
            raise ValueError(f"objective: {self.objective!r} trains task {owner!r}, not {self.task!r}")
        if self.objective == "grpo" and not self.rewards:
            raise ValueError("objective: grpo learns from graders: add a rewards: list (e.g. "
                             "[{type: string_check, input: '{{sample.output_text}}', reference: '{{item.answer}}', "
                             "operation: eq}])")
        return self


def add_section(name: str, model: type[BaseModel], default: BaseModel | None = None) -> None:
    """Add an options section `name:` to every recipe, for a plug-in task or method (its
    `options_section`). `model` validates it (derive from BaseModel with extra="forbid" to get the
    same unknown-key errors); a recipe without the section gets `default`, else `model()`.

        class BiasOptions(BaseModel):
            model_config = ConfigDict(extra="forbid")
            layers: int = 2

        add_section("bias", BiasOptions)   # recipe.bias.layers, `--set bias.layers=4`
    """
    if name in Recipe.model_fields:
        raise ValueError(f"the recipe has a {name!r} section already")
    Recipe.model_fields[name] = FieldInfo.from_annotated_attribute(model, default if default is not None else model())
    Recipe.__annotations__[name] = model
    Recipe.model_rebuild(force=True)


# Names users bring from the Hugging Face Trainer, Axolotl, LLaMA-Factory and TRL configs.
FOREIGN_KEYS = {
    "learning_rate": "train.lr", "lr": "train.lr", "num_train_epochs": "train.epochs", "num_epochs": "train.epochs",
    "epochs": "train.epochs", "max_steps": "train.max_steps", "gradient_accumulation_steps": "train.grad_accum",
    "micro_batch_size": "train.batch_size", "per_device_train_batch_size": "train.batch_size",
    "batch_size": "train.batch_size", "per_device_eval_batch_size": "train.eval_batch_size",
    "max_seq_length": "train.max_length", "sequence_len": "train.max_length", "cutoff_len": "train.max_length",
    "max_length": "train.max_length", "warmup_ratio": "train.warmup_ratio", "lr_scheduler_type": "train.scheduler",
    "lr_scheduler": "train.scheduler", "weight_decay": "train.weight_decay", "max_grad_norm": "train.max_grad_norm",
    "seed": "train.seed", "bf16": "train.precision", "fp16": "train.precision", "logging_steps": "train.log_every",
    "eval_steps": "train.eval_every", "save_steps": "train.save_every", "neftune_noise_alpha": "train.neftune_alpha",
    "gradient_checkpointing": "memory.gradient_checkpointing", "lora_r": "lora.r", "lora_alpha": "lora.alpha",
    "lora_dropout": "lora.dropout", "lora_target_modules": "lora.target_modules",
    "lora_target": "lora.target_modules", "base_model": "model", "model_name_or_path": "model",
    "datasets": "data.train", "dataset": "data.train", "train_file": "data.train", "output_dir": "output",
    "finetuning_type": "method", "adapter": "method", "chat_template": "data.format",
    "torch_compile": "train.compile", "sample_packing": "memory.packing", "packing": "memory.packing",
}


def _did_you_mean(loc: tuple, allowed: list[str]) -> str:
    """A hint for an unknown key: our name for a key another tool uses, or a close spelling."""
    import difflib

    leaf = str(loc[-1]).lower()
    here = ".".join(str(p) for p in loc[:-1])
    ours = FOREIGN_KEYS.get(leaf)
    if ours and ours != ".".join(str(p) for p in loc):
        return f"did you mean {ours}? "
    close = difflib.get_close_matches(leaf, allowed, n=1, cutoff=0.75)
    return f"did you mean {here + '.' if here else ''}{close[0]}? " if close else ""


def _format_validation_error(err: ValidationError, source: str, overrides: list[str] | None = None) -> str:
    """One line per problem, each naming its key (and the --set that gave it) and what to do."""
    given = {}
    for item in overrides or []:
        given[item.split("=", 1)[0].strip()] = item
    lines = [f"{source}: the recipe is not valid:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            parent = _model_at(e["loc"][:-1])
            allowed = list(parent.model_fields) if parent else []
            msg = f"unknown key; {_did_you_mean(e['loc'], allowed)}(allowed keys here: {', '.join(allowed) or '?'})"
        elif e["type"] == "missing":
            msg = "required key is missing"
        else:
            if e["type"] == "value_error":
                msg = str(e["ctx"]["error"])  # our own message, without pydantic's "Value error, " in front
            shown = repr(e.get("input"))
            if isinstance(e.get("input"), (str, int, float, bool, type(None))) and shown not in msg:
                msg += f" (got {shown})"
        where = f" (--set {given[key]})" if key in given else ""
        lines.append(f"  - {key}{where}: {msg}")
    return "\n".join(lines)


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = Recipe
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        # unwrap Optional[X]
        args = getattr(ann, "__args__", None)
        if args:
            ann = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), ann)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.lr=3e-5")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise UserError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise UserError(f"--set {item}: {part!r} is not a section of the recipe")
            node = nxt
        node[path[-1]] = value
    return data


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> tuple[Recipe, Path]:
    """Read a YAML recipe, apply overrides, validate. Returns the recipe and its folder."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); a recipe is a YAML text file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe is a YAML mapping (task:, model:, data:, ...)")
    data = apply_overrides(data, overrides or [])
    recipe = recipe_from_dict(data, source=str(path), overrides=overrides)
    return recipe, path.resolve().parent


def recipe_from_dict(data: dict, source: str = "recipe", overrides: list[str] | None = None) -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise UserError(_format_validation_error(e, source, overrides)) from None


def recipe_to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def recipe_diff(a: "Recipe | dict", b: "Recipe | dict") -> list[str]:
    """Dotted keys whose values differ between two recipes (or two dicts, e.g. their dumps)."""
    def walk(x, y, prefix: str) -> list[str]:
        if isinstance(x, dict) and isinstance(y, dict):
            return [d for k in sorted(set(x) | set(y)) for d in walk(x.get(k), y.get(k), f"{prefix}{k}.")]
        return [prefix.rstrip(".")] if x != y else []

    def as_dict(r):
        return r.model_dump(mode="json") if isinstance(r, BaseModel) else r

    return walk(as_dict(a), as_dict(b), "")


def eval_batch_size(recipe: Recipe) -> int:
    """Rows per forward pass when scoring: validation in the loop, the test evaluation, generation.
    Twice the training batch by default: scoring holds no gradients or optimizer state, so it fits
    where training fit (a generation's key-value cache is small beside a backward pass's activations)."""
    return recipe.eval.batch_size or recipe.train.eval_batch_size or recipe.train.batch_size * 2
