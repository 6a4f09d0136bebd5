"""Several trained models of one architecture that predict as one: their probabilities averaged
(classification, multilabel) or their predictions (regression).

The output keeps the form of a single model's, so everything that scores, predicts or exports a
model takes an ensemble too: log-probabilities for classes (argmax and softmax give the averaged
ones back), the logit of the averaged probability for labels, predictions in target units.
Members share the input pipeline (same backbone architecture and preprocessing); `backbone` is
the first member's, for what prepares inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from tunesmith.models.backbone import Backbone
from tunesmith.models.heads import full_precision
from tunesmith.models.task_model import TaskModel

KINDS = ("classification", "multilabel", "regression")


class Ensemble(nn.Module):
    def __init__(self, members: Sequence[TaskModel], kind: str) -> None:
        super().__init__()
        if kind not in KINDS or len(members) < 2:
            raise ValueError(f"an ensemble needs 2 or more members of one kind, not {kind}")
        self.members = nn.ModuleList(members)
        self.kind = kind

    @property
    def backbone(self) -> Backbone:
        member: TaskModel = self.members[0]  # type: ignore[assignment]
        return member.backbone

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        outputs = torch.stack([full_precision(member(inputs)) for member in self.members])
        if self.kind == "classification":
            return torch.logsumexp(torch.log_softmax(outputs, dim=-1), dim=0) - torch.log(
                torch.tensor(float(len(self.members)), device=outputs.device))
        if self.kind == "multilabel":
            return torch.logit(torch.sigmoid(outputs).mean(dim=0), eps=1e-7)
        return outputs.mean(dim=0)
