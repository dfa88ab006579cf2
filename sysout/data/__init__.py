from sysout.data.bigram_backcopy import BigramBackcopyDataModule
from sysout.data.datamodule import TextDataModule
from sysout.data.probe_inputs import ProbeInputs, probe_windows_from_tokens
from sysout.data.sampler import RankWindowSampler
from sysout.data.sources import DataSourceError, TextSource
from sysout.data.token_cache import load_tokens
from sysout.data.tokenizer import ENCODING, EOT_TOKEN, get_tokenizer
from sysout.data.windows import FixedWindows, RandomWindows

__all__ = [
    "BigramBackcopyDataModule",
    "ENCODING",
    "EOT_TOKEN",
    "DataSourceError",
    "FixedWindows",
    "ProbeInputs",
    "RandomWindows",
    "RankWindowSampler",
    "TextDataModule",
    "TextSource",
    "get_tokenizer",
    "load_tokens",
    "probe_windows_from_tokens",
]
