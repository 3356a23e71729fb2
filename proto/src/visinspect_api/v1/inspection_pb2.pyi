from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ChannelOrder(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANNEL_ORDER_UNSPECIFIED: _ClassVar[ChannelOrder]
    CHANNEL_ORDER_RGB: _ClassVar[ChannelOrder]
    CHANNEL_ORDER_BGR: _ClassVar[ChannelOrder]

class MapSize(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MAP_SIZE_UNSPECIFIED: _ClassVar[MapSize]
    MAP_SIZE_MODEL: _ClassVar[MapSize]
    MAP_SIZE_ORIGINAL: _ClassVar[MapSize]
CHANNEL_ORDER_UNSPECIFIED: ChannelOrder
CHANNEL_ORDER_RGB: ChannelOrder
CHANNEL_ORDER_BGR: ChannelOrder
MAP_SIZE_UNSPECIFIED: MapSize
MAP_SIZE_MODEL: MapSize
MAP_SIZE_ORIGINAL: MapSize

class RawImage(_message.Message):
    __slots__ = ("data", "height", "width", "channels", "channel_order")
    DATA_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_ORDER_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    height: int
    width: int
    channels: int
    channel_order: ChannelOrder
    def __init__(self, data: _Optional[bytes] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., channels: _Optional[int] = ..., channel_order: _Optional[_Union[ChannelOrder, str]] = ...) -> None: ...

class ImageInput(_message.Message):
    __slots__ = ("encoded", "raw", "path")
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    encoded: bytes
    raw: RawImage
    path: str
    def __init__(self, encoded: _Optional[bytes] = ..., raw: _Optional[_Union[RawImage, _Mapping]] = ..., path: _Optional[str] = ...) -> None: ...

class Extras(_message.Message):
    __slots__ = ("anomaly_map", "mask", "regions", "map_size")
    ANOMALY_MAP_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    MAP_SIZE_FIELD_NUMBER: _ClassVar[int]
    anomaly_map: bool
    mask: bool
    regions: bool
    map_size: MapSize
    def __init__(self, anomaly_map: _Optional[bool] = ..., mask: _Optional[bool] = ..., regions: _Optional[bool] = ..., map_size: _Optional[_Union[MapSize, str]] = ...) -> None: ...

class DetectRequest(_message.Message):
    __slots__ = ("request_id", "model", "model_version", "image", "threshold", "extras")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    EXTRAS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    model_version: int
    image: ImageInput
    threshold: float
    extras: Extras
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., model_version: _Optional[int] = ..., image: _Optional[_Union[ImageInput, _Mapping]] = ..., threshold: _Optional[float] = ..., extras: _Optional[_Union[Extras, _Mapping]] = ...) -> None: ...

class BoundingBox(_message.Message):
    __slots__ = ("x", "y", "width", "height")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    x: int
    y: int
    width: int
    height: int
    def __init__(self, x: _Optional[int] = ..., y: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class Region(_message.Message):
    __slots__ = ("box", "area", "peak_score", "mean_score")
    BOX_FIELD_NUMBER: _ClassVar[int]
    AREA_FIELD_NUMBER: _ClassVar[int]
    PEAK_SCORE_FIELD_NUMBER: _ClassVar[int]
    MEAN_SCORE_FIELD_NUMBER: _ClassVar[int]
    box: BoundingBox
    area: int
    peak_score: float
    mean_score: float
    def __init__(self, box: _Optional[_Union[BoundingBox, _Mapping]] = ..., area: _Optional[int] = ..., peak_score: _Optional[float] = ..., mean_score: _Optional[float] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("decode_ms", "preprocess_ms", "inference_ms", "postprocess_ms", "total_ms")
    DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    PREPROCESS_MS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    POSTPROCESS_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    decode_ms: float
    preprocess_ms: float
    inference_ms: float
    postprocess_ms: float
    total_ms: float
    def __init__(self, decode_ms: _Optional[float] = ..., preprocess_ms: _Optional[float] = ..., inference_ms: _Optional[float] = ..., postprocess_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class DetectResponse(_message.Message):
    __slots__ = ("request_id", "is_anomalous", "score", "confidence", "raw_score", "threshold", "model", "model_version", "anomaly_map_png", "mask_png", "regions", "timing", "image_width", "image_height")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    IS_ANOMALOUS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    RAW_SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ANOMALY_MAP_PNG_FIELD_NUMBER: _ClassVar[int]
    MASK_PNG_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    IMAGE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    IMAGE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    is_anomalous: bool
    score: float
    confidence: float
    raw_score: float
    threshold: float
    model: str
    model_version: int
    anomaly_map_png: bytes
    mask_png: bytes
    regions: _containers.RepeatedCompositeFieldContainer[Region]
    timing: Timing
    image_width: int
    image_height: int
    def __init__(self, request_id: _Optional[str] = ..., is_anomalous: _Optional[bool] = ..., score: _Optional[float] = ..., confidence: _Optional[float] = ..., raw_score: _Optional[float] = ..., threshold: _Optional[float] = ..., model: _Optional[str] = ..., model_version: _Optional[int] = ..., anomaly_map_png: _Optional[bytes] = ..., mask_png: _Optional[bytes] = ..., regions: _Optional[_Iterable[_Union[Region, _Mapping]]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ..., image_width: _Optional[int] = ..., image_height: _Optional[int] = ...) -> None: ...

class StreamError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class DetectStreamResponse(_message.Message):
    __slots__ = ("request_id", "result", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    result: DetectResponse
    error: StreamError
    def __init__(self, request_id: _Optional[str] = ..., result: _Optional[_Union[DetectResponse, _Mapping]] = ..., error: _Optional[_Union[StreamError, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelVersions(_message.Message):
    __slots__ = ("name", "versions", "default_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    versions: _containers.RepeatedScalarFieldContainer[int]
    default_version: int
    def __init__(self, name: _Optional[str] = ..., versions: _Optional[_Iterable[int]] = ..., default_version: _Optional[int] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelVersions]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelVersions, _Mapping]]] = ...) -> None: ...

class DescribeModelRequest(_message.Message):
    __slots__ = ("model", "model_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_version: int
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[int] = ...) -> None: ...

class InputSpec(_message.Message):
    __slots__ = ("height", "width", "layout", "dtype", "color_order", "interpolation")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    COLOR_ORDER_FIELD_NUMBER: _ClassVar[int]
    INTERPOLATION_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    layout: str
    dtype: str
    color_order: str
    interpolation: str
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ..., layout: _Optional[str] = ..., dtype: _Optional[str] = ..., color_order: _Optional[str] = ..., interpolation: _Optional[str] = ...) -> None: ...

class ScoreDistribution(_message.Message):
    __slots__ = ("count", "values")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    count: int
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, count: _Optional[int] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class CalibrationSpec(_message.Message):
    __slots__ = ("image_threshold", "pixel_threshold", "image_min", "image_max", "pixel_min", "pixel_max", "source", "overlaps_test", "method", "target_false_reject_rate", "good_scores", "defect_scores", "warnings")
    IMAGE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    PIXEL_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    IMAGE_MIN_FIELD_NUMBER: _ClassVar[int]
    IMAGE_MAX_FIELD_NUMBER: _ClassVar[int]
    PIXEL_MIN_FIELD_NUMBER: _ClassVar[int]
    PIXEL_MAX_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    OVERLAPS_TEST_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TARGET_FALSE_REJECT_RATE_FIELD_NUMBER: _ClassVar[int]
    GOOD_SCORES_FIELD_NUMBER: _ClassVar[int]
    DEFECT_SCORES_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    image_threshold: float
    pixel_threshold: float
    image_min: float
    image_max: float
    pixel_min: float
    pixel_max: float
    source: str
    overlaps_test: bool
    method: str
    target_false_reject_rate: float
    good_scores: ScoreDistribution
    defect_scores: ScoreDistribution
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, image_threshold: _Optional[float] = ..., pixel_threshold: _Optional[float] = ..., image_min: _Optional[float] = ..., image_max: _Optional[float] = ..., pixel_min: _Optional[float] = ..., pixel_max: _Optional[float] = ..., source: _Optional[str] = ..., overlaps_test: _Optional[bool] = ..., method: _Optional[str] = ..., target_false_reject_rate: _Optional[float] = ..., good_scores: _Optional[_Union[ScoreDistribution, _Mapping]] = ..., defect_scores: _Optional[_Union[ScoreDistribution, _Mapping]] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class DefectTypeRecall(_message.Message):
    __slots__ = ("name", "caught", "total")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CAUGHT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    name: str
    caught: int
    total: int
    def __init__(self, name: _Optional[str] = ..., caught: _Optional[int] = ..., total: _Optional[int] = ...) -> None: ...

class EvaluationMetrics(_message.Message):
    __slots__ = ("num_images", "num_anomalous", "image_auroc", "image_f1", "pixel_auroc", "max_rel_score_diff_vs_torch", "inference_precision", "notes", "false_reject_rate", "defect_recall", "recall_by_defect_type", "pixel_aupro")
    NUM_IMAGES_FIELD_NUMBER: _ClassVar[int]
    NUM_ANOMALOUS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_AUROC_FIELD_NUMBER: _ClassVar[int]
    IMAGE_F1_FIELD_NUMBER: _ClassVar[int]
    PIXEL_AUROC_FIELD_NUMBER: _ClassVar[int]
    MAX_REL_SCORE_DIFF_VS_TORCH_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_PRECISION_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    FALSE_REJECT_RATE_FIELD_NUMBER: _ClassVar[int]
    DEFECT_RECALL_FIELD_NUMBER: _ClassVar[int]
    RECALL_BY_DEFECT_TYPE_FIELD_NUMBER: _ClassVar[int]
    PIXEL_AUPRO_FIELD_NUMBER: _ClassVar[int]
    num_images: int
    num_anomalous: int
    image_auroc: float
    image_f1: float
    pixel_auroc: float
    max_rel_score_diff_vs_torch: float
    inference_precision: str
    notes: _containers.RepeatedScalarFieldContainer[str]
    false_reject_rate: float
    defect_recall: float
    recall_by_defect_type: _containers.RepeatedCompositeFieldContainer[DefectTypeRecall]
    pixel_aupro: float
    def __init__(self, num_images: _Optional[int] = ..., num_anomalous: _Optional[int] = ..., image_auroc: _Optional[float] = ..., image_f1: _Optional[float] = ..., pixel_auroc: _Optional[float] = ..., max_rel_score_diff_vs_torch: _Optional[float] = ..., inference_precision: _Optional[str] = ..., notes: _Optional[_Iterable[str]] = ..., false_reject_rate: _Optional[float] = ..., defect_recall: _Optional[float] = ..., recall_by_defect_type: _Optional[_Iterable[_Union[DefectTypeRecall, _Mapping]]] = ..., pixel_aupro: _Optional[float] = ...) -> None: ...

class ModelDescription(_message.Message):
    __slots__ = ("name", "version", "architecture", "input", "calibration", "default_threshold", "backbone", "layers", "n_features", "weights", "inference_precision", "ir_precision", "dataset", "evaluation", "created_at", "parameters")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    BACKBONE_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    N_FEATURES_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_PRECISION_FIELD_NUMBER: _ClassVar[int]
    IR_PRECISION_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    architecture: str
    input: InputSpec
    calibration: CalibrationSpec
    default_threshold: float
    backbone: str
    layers: _containers.RepeatedScalarFieldContainer[str]
    n_features: int
    weights: str
    inference_precision: str
    ir_precision: str
    dataset: str
    evaluation: EvaluationMetrics
    created_at: str
    parameters: _containers.ScalarMap[str, float]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., architecture: _Optional[str] = ..., input: _Optional[_Union[InputSpec, _Mapping]] = ..., calibration: _Optional[_Union[CalibrationSpec, _Mapping]] = ..., default_threshold: _Optional[float] = ..., backbone: _Optional[str] = ..., layers: _Optional[_Iterable[str]] = ..., n_features: _Optional[int] = ..., weights: _Optional[str] = ..., inference_precision: _Optional[str] = ..., ir_precision: _Optional[str] = ..., dataset: _Optional[str] = ..., evaluation: _Optional[_Union[EvaluationMetrics, _Mapping]] = ..., created_at: _Optional[str] = ..., parameters: _Optional[_Mapping[str, float]] = ...) -> None: ...
