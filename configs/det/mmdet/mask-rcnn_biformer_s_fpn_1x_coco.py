# Mask R-CNN 1x COCO, BiFormer-S. Source: rayleizhu/BiFormer object_detection/configs/coco/maskrcnn.1x.biformer_small.py
# (n_win=16, drop path 0.2, BatchNorms frozen (BiFormer_mm norm_eval=True), a LayerNorm2d per output, AdamW lr 1e-4
# wd 0.05 without decay on norms / position tables (UniFormer's recipe), mmdet schedule_1x, fp16: add --amp).
_base_ = './_base_/mask_rcnn_1x.py'
# release checkpoint biformer_small_best.pth (OneDrive link in the BiFormer README); its layout is mapped on load
pretrained = 'checkpoints/biformer_small_best.pth'
model = dict(
    backbone=dict(
        model_name='biformer_s',
        norm_eval=True,
        drop_path_rate=0.2,
        model_kwargs=dict(n_win=16),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 256, 512]))
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={
        'absolute_pos_embed': dict(decay_mult=0.),
        'relative_position_bias_table': dict(decay_mult=0.),
        'norm': dict(decay_mult=0.)}))
