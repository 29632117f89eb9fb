"""SSDLite detectors as exportable cores, with the SSD training loss and detection distillation.

torchvision's ``SSD`` takes lists of images, resizes them, and runs NMS inside ``forward``: none of that
converts to TFLite or OpenVINO. ``SSDLiteCore`` keeps only what ships: backbone (torchvision's
``SSDLiteFeatureExtractorMobileNet``), ``SSDLiteHead``, and box decoding against fixed anchors in plain
tensor ops. It maps a fixed-size batch to ``(logits [N, A, C+1], boxes [N, A, 4])``; score threshold,
top-k and NMS run afterwards in numpy, the same code for every runtime. Its state dict keys are
torchvision's (``backbone.*``, ``head.*``), so torchvision's COCO weights load into it.

Boxes are normalised ``x1, y1, x2, y2`` of the input (not clipped); class 0 is background.

>>> model = ssdlite320_mobilenet_v3_large(ModelSpec(arch="ssdlite320_mobilenet_v3_large", image_size=128), 10)
>>> logits, boxes = model(torch.zeros(2, 3, 128, 128))
>>> logits.shape, boxes.shape, model.anchors.shape
(torch.Size([2, 1206, 11]), torch.Size([2, 1206, 4]), torch.Size([1206, 4]))
"""

from __future__ import annotations

import math
from functools import partial
from types import SimpleNamespace

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models._utils import _make_divisible
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.ssdlite import SSDLiteFeatureExtractorMobileNet, SSDLiteHead, _normal_init
from torchvision.ops import box_iou
from torchvision.ops.misc import Conv2dNormActivation

from compress.schema import ModelSpec
from targets.base import EdgecompError

DetectionOutputs = tuple[Tensor, Tensor]  # (class logits [N, A, C+1], decoded boxes [N, A, 4])

# torchvision's ssdlite320_mobilenet_v3_large settings, shared by both detectors.
NORM_LAYER = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
BOX_CODER = det_utils.BoxCoder(BOX_WEIGHTS)
MATCHER = det_utils.SSDMatcher(0.5)
NEG_TO_POS = 3
DEFAULT_IMAGE_SIZE = 320  # when a ModelSpec built outside a recipe has no image_size

# Detection KD: anchors whose teacher foreground probability exceeds this get the box term.
KD_BOX_CONFIDENCE = 0.5


def _anchor_generator() -> DefaultBoxGenerator:
    return DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=0.2, max_ratio=0.95)


class SSDLiteCore(nn.Module):
    """Backbone + SSDLite head + box decoding: the part of an SSDLite detector that is exported.

    ``anchors`` (normalised xyxy, [A, 4]) is a non-persistent buffer computed at build time for
    ``image_size`` by torchvision's DefaultBoxGenerator: checkpoints hold no anchors, a rebuilt
    model computes them again, and pruning (channels only) never changes them.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, image_size: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.image_size = image_size
        generator = _anchor_generator()
        features = _probe(backbone, image_size)
        channels = [f.shape[1] for f in features]
        self.head = SSDLiteHead(channels, generator.num_anchors_per_location(), num_classes + 1, NORM_LAYER)
        image = ImageList(torch.zeros(1, 3, image_size, image_size), [(image_size, image_size)])
        self.register_buffer("anchors", generator(image, features)[0] / image_size, persistent=False)

    def forward(self, x: Tensor) -> DetectionOutputs:
        # The anchors fit one input size. (TorchScript tracing, OpenVINO's converter, fixes the shape anyway
        # and would warn about the comparison.)
        if not torch.jit.is_tracing() and tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise EdgecompError(
                f"this detector is built for {self.image_size}x{self.image_size} inputs (model.image_size), "
                f"not {x.shape[-2]}x{x.shape[-1]}"
            )
        out = self.head(list(self.backbone(x).values()))
        return out["cls_logits"], decode(out["bbox_regression"], self.anchors)

    def reinitialize(self) -> None:
        """Fresh weights as torchvision initialises an SSDLite without pretrained weights (every conv N(0, 0.03),
        BN reset), for the scratch baselines: MobileNet's Kaiming init on the extra layers and predictors starts
        the loss ~2.5x higher with boxes up to 20x the image, and Scratch-E never recovered (mAP@.5 0.009)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                _normal_init(module)
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()

    def output_layers(self) -> list[nn.Module]:
        """The last conv of every class and box predictor: their outputs are anchors x (C+1) and anchors x 4."""
        heads = (self.head.classification_head, self.head.regression_head)
        return [block[-1] for head in heads for block in head.module_list]


@torch.no_grad()
def _probe(backbone: nn.Module, image_size: int) -> list[Tensor]:
    """The backbone's feature maps on a zero image, in eval mode so BN statistics stay untouched."""
    training = backbone.training
    features = list(backbone.eval()(torch.zeros(1, 3, image_size, image_size)).values())
    backbone.train(training)
    return features


def decode(deltas: Tensor, anchors: Tensor) -> Tensor:
    """torchvision's ``BoxCoder.decode_single`` (weights 10, 10, 5, 5) on [N, A, 4] by broadcasting, in ops
    that TFLite and OpenVINO convert (no strided slices, no per-image loop)."""
    size = anchors[:, 2:] - anchors[:, :2]
    center = anchors[:, :2] + 0.5 * size
    weights = deltas.new_tensor(BOX_WEIGHTS)
    scaled = deltas / weights
    xy = scaled[..., :2] * size + center
    half = 0.5 * torch.exp(scaled[..., 2:].clamp(max=BOX_CODER.bbox_xform_clip)) * size
    return torch.cat([xy - half, xy + half], dim=-1)


def _last_stride2(features: nn.Sequential) -> int:
    """Index of the last stride-2 block: its expansion output is the stride-16 level (torchvision's C4)."""
    return [i for i, block in enumerate(features) if getattr(block, "_is_cn", False)][-1]


def _extractor(blocks: list, c4: int, width_mult: float) -> SSDLiteFeatureExtractorMobileNet:
    """torchvision's SSDLite feature extractor: level 1 is the expansion output of block `c4` (output stride
    16), level 2 the last feature map, then 4 extra blocks whose widths (512, 256, 256, 128) scale with
    `width_mult` (torchvision's `_mobilenet_extractor` keeps them at full width and freezes layers; neither
    suits small models trained from scratch)."""
    extractor = SSDLiteFeatureExtractorMobileNet(blocks, c4, NORM_LAYER, width_mult=width_mult)
    _normal_init(extractor.features)  # torchvision's init for a backbone without pretrained weights
    return extractor


def _image_size(spec: ModelSpec) -> int:
    if spec.small_input:
        raise EdgecompError(f"model.small_input is for classifiers; {spec.arch} sets its input size by image_size")
    return spec.image_size or DEFAULT_IMAGE_SIZE


def ssdlite320_mobilenet_v3_large(spec: ModelSpec, num_classes: int) -> SSDLiteCore:
    """torchvision's SSDLite320-MobileNetV3-Large (reduced tail, as its COCO weights) at any width and size."""
    size = _image_size(spec)
    features = torchvision.models.mobilenet_v3_large(
        weights=None, width_mult=spec.width_mult, reduced_tail=True, norm_layer=NORM_LAYER
    ).features
    return SSDLiteCore(_extractor(list(features), _last_stride2(features), spec.width_mult), num_classes, size)


def ssdlite_mobilenet_v2(spec: ModelSpec, num_classes: int) -> SSDLiteCore:
    """SSDLite on MobileNetV2 (Sandler et al. 2018, §6.2): predictions on the expansion of the stride-16
    block (layer 15) and on the last feature map, whose 1280 channels scale with the width here, as in
    the paper (torchvision's classifier keeps 1280 below width 1)."""
    size = _image_size(spec)
    features = torchvision.models.mobilenet_v2(weights=None, width_mult=spec.width_mult, norm_layer=NORM_LAYER).features
    last_width = _make_divisible(1280 * spec.width_mult, 8)
    features[-1] = Conv2dNormActivation(
        features[-1][0].in_channels, last_width, 1, norm_layer=NORM_LAYER, activation_layer=nn.ReLU6
    )
    c4 = _last_stride2(features)
    # torchvision's extractor splits a MobileNetV3 block's `.block` after the expansion; V2 names it `.conv`.
    blocks = list(features)
    blocks[c4] = SimpleNamespace(block=features[c4].conv, use_res_connect=features[c4].use_res_connect)
    return SSDLiteCore(_extractor(blocks, c4, spec.width_mult), num_classes, size)


BUILDERS = {
    "ssdlite320_mobilenet_v3_large": ssdlite320_mobilenet_v3_large,
    "ssdlite_mobilenet_v2": ssdlite_mobilenet_v2,
}


def model_anchors(model: nn.Module) -> Tensor:
    """The anchors of the SSDLiteCore inside `model` (itself, or wrapped, e.g. by DDP's ``.module``)."""
    for module in model.modules():
        if isinstance(module, SSDLiteCore):
            return module.anchors
    raise EdgecompError(f"{type(model).__name__} is not a detector: it holds no SSDLiteCore")


def _match(targets: Tensor, anchors: Tensor) -> tuple[Tensor, Tensor]:
    """Per anchor, the class index (0 background, object class + 1) and the matched ground-truth box (the anchor
    itself where none is), by torchvision's SSDMatcher (IoU >= 0.5, plus each ground truth's best anchor; of two
    objects with one best anchor, the later takes it, as torchvision's per-image assignment does on the CPU).

    Batched over the images, padding rows masked rather than dropped: no per-image loop and no boolean indexing,
    which on a GPU waited for the device three times per image (a 32-image step spent most of its time there).
    """
    if targets.shape[1] == 0:  # no rows at all: every anchor is background
        return anchors.new_zeros(len(targets), len(anchors), dtype=torch.long), anchors.expand(len(targets), -1, -1)
    valid = targets[..., 0] >= 0  # [N, M]
    iou = box_iou(targets[..., 1:].flatten(0, 1), anchors).view(*valid.shape, len(anchors))
    iou = iou.masked_fill(~valid[..., None], -1.0)  # padding matches no anchor
    best_iou, matched = iou.max(dim=1)  # per anchor, its best object [N, A]
    matched = torch.where(best_iou >= MATCHER.low_threshold, matched, -1)
    objects = torch.arange(valid.shape[1], device=targets.device).expand_as(valid)
    forced = torch.full_like(matched, -1).scatter_reduce(1, iou.argmax(dim=2), torch.where(valid, objects, -1), "amax")
    matched = torch.where(forced >= 0, forced, matched)
    found = matched.clamp(min=0)
    labels = torch.where(matched >= 0, targets[..., 0].gather(1, found).long() + 1, 0)
    boxes = targets[..., 1:].gather(1, found[..., None].expand(-1, -1, 4))
    return labels, torch.where((matched >= 0)[..., None], boxes, anchors)


def ssd_loss(outputs: DetectionOutputs, targets: Tensor, anchors: Tensor) -> Tensor:
    """The SSD multibox loss with torchvision's ``SSD.compute_loss`` semantics: smooth-L1 on the box deltas of
    positive anchors plus cross-entropy over positives and the 3x as many hardest negatives, both divided by
    the number of positives.

    `targets` is [N, M, 5] rows (class 0..C-1, x1, y1, x2, y2 normalised), padded with rows of -1. The core
    outputs decoded boxes; re-encoding them against their anchors gives back the raw deltas exactly (the
    coding is a bijection), so the box term is torchvision's. Only where the decoder clamps a log-size
    delta (boxes over 62x their anchor) does the gradient stop; a sane model never gets there.

    Selections are masks, not indexing, so a training step never waits for the GPU here.
    """
    logits, boxes = outputs
    labels, matched = _match(targets, anchors)
    positive = labels > 0
    count = positive.sum().clamp(min=1)
    # Where no object is matched both sides are the anchor itself: deltas 0 - 0, no loss and no gradient.
    anchor_rows = anchors.expand_as(boxes).reshape(-1, 4)
    predicted = BOX_CODER.encode_single(torch.where(positive[..., None], boxes, anchors).reshape(-1, 4), anchor_rows)
    wanted = BOX_CODER.encode_single(matched.reshape(-1, 4), anchor_rows)
    box_loss = F.smooth_l1_loss(predicted, wanted, reduction="sum")

    class_loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view_as(labels)
    negative_loss = class_loss.masked_fill(positive, -math.inf)
    rank = negative_loss.sort(1, descending=True)[1].sort(1)[1]
    hard_negative = rank < NEG_TO_POS * positive.sum(1, keepdim=True)
    # Summed apart, as torchvision does: a positive ranked among the hard negatives (more than a quarter of the
    # anchors positive) counts twice there too.
    class_sum = torch.where(positive, class_loss, 0.0).sum() + torch.where(hard_negative, class_loss, 0.0).sum()
    return (box_loss + class_sum) / count


def detection_kd_loss(student: DetectionOutputs, teacher: DetectionOutputs, temperature: float) -> Tensor:
    """Class-score KD on anchors plus a box term on the anchors the teacher finds objects in.

    Class term: KL(teacher || student) of the temperature-softened class distribution of each anchor,
    times T^2 (as logits KD). Nearly every anchor is background to both networks; a plain mean over
    anchors would be ruled by that easy agreement. Each anchor is weighted by the larger of the teacher's
    and the student's foreground probability (1 - p(background), at T=1, not differentiated): anchors
    either network takes for an object count, so the student learns the teacher's objects and is also
    corrected where it fires on the teacher's background; the weights are normalised by their sum (at
    least 1, so an image of pure background gives a small loss rather than a divided-up one).

    Box term: on anchors with teacher foreground probability above KD_BOX_CONFIDENCE, the L1 distance
    between the decoded boxes, each coordinate divided by the teacher box's width or height so that small
    and large objects count alike (as in the SSD loss's box encoding), averaged over those anchors.
    """
    (s_logits, s_boxes), (t_logits, t_boxes) = student, teacher
    t_logits, t_boxes = t_logits.detach(), t_boxes.detach()
    log_p_student = F.log_softmax(s_logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(t_logits / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="none").sum(-1)
    t_foreground = 1 - F.softmax(t_logits, dim=-1)[..., 0]
    s_foreground = 1 - F.softmax(s_logits.detach(), dim=-1)[..., 0]
    weight = torch.maximum(t_foreground, s_foreground)
    class_loss = (weight * kl).sum() / weight.sum().clamp(min=1) * temperature**2

    confident = t_foreground > KD_BOX_CONFIDENCE
    size = (t_boxes[..., 2:] - t_boxes[..., :2]).clamp(min=1e-6).repeat(1, 1, 2)
    box_error = ((s_boxes - t_boxes).abs() / size).sum(-1)
    box_loss = box_error[confident].sum() / max(1, int(confident.sum()))
    return class_loss + box_loss
