# RetinaNet 1x COCO, BiFormer-S. Source: rayleizhu/BiFormer object_detection/configs/coco/retinanet.1x.biformer_small.py
# (n_win=16, drop path 0.2, BatchNorms frozen (BiFormer_mm norm_eval=True), a LayerNorm2d per output, AdamW lr 1e-4
# wd 1e-4, mmdet schedule_1x, fp16: add --amp to mmdet's tools/train.py).
_base_ = './_base_/retinanet_1x.py'
# release checkpoint biformer_small_best.pth (OneDrive link in the BiFormer README); its layout is mapped on load
pretrained = 'checkpoints/biformer_small_best.pth'
model = dict(
    backbone=dict(
        model_name='biformer_s',
        norm_eval=True,
        drop_path_rate=0.2,
        model_kwargs=dict(n_win=16),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[128, 256, 512]))
optim_wrapper = dict(optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, weight_decay=1e-4))
