"""The labeling room's errors: each names what is wrong and how to fix it."""

from __future__ import annotations


class LabelingError(Exception):
    """Base of every error this room raises on purpose."""


class LabelStudioUnavailable(LabelingError):
    """Label Studio did not answer (down, slow or failing) after bounded retries."""


class LabelStudioRequestError(LabelingError):
    """Label Studio answered but refused the request (4xx): the input is wrong, retrying won't help."""


class InvalidExamplesError(LabelingError):
    """The examples table cannot become tasks (missing columns, duplicated or empty example ids)."""


class LabelConfigError(LabelingError):
    """A labeling config or its choices are unusable."""


class ContributorsError(LabelingError):
    """The contributors registry file is malformed (bad address, duplicated id)."""


class MissingAddressError(ContributorsError):
    """Some contributors have no EVM address in the registry: they would go unpaid."""

    def __init__(self, missing: list[str], registry: str):
        self.missing = sorted(missing)
        super().__init__(
            f"{len(self.missing)} contributor(s) have no address in {registry}: {', '.join(self.missing)}; "
            "add a row `<contributor id>,<0x address>` for each before paying"
        )
