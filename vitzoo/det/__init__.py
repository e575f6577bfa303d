"""Detection adapters: any vitzoo backbone as a multi-scale detection backbone.

- :mod:`vitzoo.det.backbone`: the one adapter (strides 4/8/16/32, out_indices, frozen_stages, norm_eval, output norms,
  any input size, classification checkpoints with the head dropped).
- :mod:`vitzoo.det.mmdet`: registers the adapter in ``mmdet.registry.MODELS`` (``custom_imports``).
- :mod:`vitzoo.det.torchvision_det`: torchvision RetinaNet / Faster R-CNN / Mask R-CNN with FPN on the adapter.
- :mod:`vitzoo.det.training`: detector + optimizer from a detection config, one training step (train_det, bench_det).
- :mod:`vitzoo.det.coco_data`: COCO-format datasets and the embedded quick-start detection set.
"""
