# Mask R-CNN 1x COCO, NAT-Tiny. Source: SHI-Labs/Neighborhood-Attention-Transformer
# detection/configs/nat/mask_rcnn_nat_tiny_3x_coco.py (drop path 0.2, a LayerNorm per output, AdamW lr 1e-4 wd 0.05
# without decay on rpb / norms, fp16: add --amp). The official detectors are 3x with multi-scale + crop augmentation;
# this is the 1x schedule (mmdet schedule_1x, single-scale 1333x800) with the official backbone and optimizer.
_base_ = './_base_/mask_rcnn_1x.py'
# download by hand (nothing is fetched at run time):
# https://shi-labs.com/projects/nat/checkpoints/CLS/nat_tiny.pth
pretrained = 'checkpoints/nat_tiny.pth'
model = dict(
    backbone=dict(
        model_name='nat_tiny',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 256, 512]))
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'rpb': dict(decay_mult=0.), 'norm': dict(decay_mult=0.)}))
