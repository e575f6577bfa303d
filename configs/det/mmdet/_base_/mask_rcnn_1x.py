# Mask R-CNN, 1x schedule, COCO, on a vitzoo backbone. Model / data / schedule / runtime are mmdet 3.3's own base files
# (shipped in the mmdet wheel under mmdet/.mim/configs, reached with the "mmdet::" prefix); this file only swaps the
# ResNet-50 backbone for VitzooBackbone and loads the vitzoo plugin. Family configs set model_name, neck in_channels,
# the optimizer and the pretrained checkpoint.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['vitzoo.det.mmdet'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='VitzooBackbone',
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        norm_eval=False,
        out_norm=True))
