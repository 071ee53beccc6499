"""The teacher's accuracy against gold, read from a run's records: the share of samples whose answer agrees
with the seed's gold answer, and the share of questions with at least one agreeing sample. Only records
whose seed carries gold count; every sample counts (rejected ones too: a sample with no answer did not
agree). The card and the report state it; a run without gold has none."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from factory.store import Store

# Payload fields that say whether a record's answer agrees with gold, per recipe record format:
# rationales (`agrees_with_gold`), program_rationales (`verified`: the executed answer equals gold).
AGREE_FIELDS = ("agrees_with_gold", "verified")


@dataclass(frozen=True, slots=True)
class GoldAccuracy:
    samples: int  # samples whose seed has gold
    agreeing: int  # of them, those whose answer agrees with gold
    questions: int  # seeds with gold
    solved: int  # of them, those with at least one agreeing sample

    @property
    def sample_share(self) -> float:
        return self.agreeing / self.samples if self.samples else 0.0

    @property
    def question_share(self) -> float:
        return self.solved / self.questions if self.questions else 0.0

    def sentence(self) -> str:
        return (
            f"The teacher's answer agrees with gold in {self.sample_share:.1%} of samples "
            f"({self.agreeing:,} of {self.samples:,}); {self.question_share:.1%} of questions "
            f"({self.solved:,} of {self.questions:,}) have at least one agreeing sample."
        )


def gold_accuracy(store: Store, run_id: str, stage: str | None = None) -> GoldAccuracy | None:
    """Accuracy against gold over the run's records (one stage's, if given); None when no record has gold."""
    samples = agreeing = 0
    solved: dict[str, bool] = {}
    for batch in store.curated_reader(run_id, stage=stage, include_rejected=True):
        cols = batch.to_pydict()
        for seed_id, blob in zip(cols["seed_id"], cols["payload"], strict=True):
            p = orjson.loads(blob)
            field = next((f for f in AGREE_FIELDS if f in p), None)
            if field is None or p.get("gold") is None:
                continue
            ok = p[field] is True
            samples += 1
            agreeing += ok
            solved[seed_id] = solved.get(seed_id, False) or ok
    if not samples:
        return None
    return GoldAccuracy(samples, agreeing, len(solved), sum(solved.values()))
