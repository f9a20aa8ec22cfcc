"""The reader: TFRecord frames -> Event protos -> typed points, from any byte offset."""
from .events import EventFileReader, tensor_to_ndarray
from .logdir import Discovery, RunSource, discover_runs, is_event_file, root_run_name
from .points import (AUDIO, HISTOGRAM, HPARAMS, IMAGE, KINDS, SCALAR, TEXT, AudioPoint, Batch,
                     HistogramPoint, HParamsPoint, ImagePoint, ScalarColumns, TextPoint)
from .records import FramingStatus, frame_record, iter_records, masked_crc32c

__all__ = [
    "AUDIO", "AudioPoint", "Batch", "Discovery", "EventFileReader", "FramingStatus", "HISTOGRAM", "HPARAMS",
    "HistogramPoint", "HParamsPoint", "IMAGE", "ImagePoint", "KINDS", "RunSource", "SCALAR",
    "ScalarColumns", "TEXT", "TextPoint", "discover_runs", "frame_record", "is_event_file",
    "root_run_name",
    "iter_records", "masked_crc32c", "tensor_to_ndarray",
]
