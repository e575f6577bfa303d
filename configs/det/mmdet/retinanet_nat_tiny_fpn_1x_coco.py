# RetinaNet 1x COCO, NAT-Tiny. The official repo (SHI-Labs/Neighborhood-Attention-Transformer) has no RetinaNet; the
# backbone settings and optimizer are those of its detection/configs/nat/mask_rcnn_nat_tiny_3x_coco.py (drop path 0.2,
# a LayerNorm per output, AdamW lr 1e-4 wd 0.05 without decay on rpb / norms) on mmdet's RetinaNet 1x.
_base_ = './_base_/retinanet_1x.py'
# download by hand (nothing is fetched at run time):
# https://shi-labs.com/projects/nat/checkpoints/CLS/nat_tiny.pth
pretrained = 'checkpoints/nat_tiny.pth'
model = dict(
    backbone=dict(
        model_name='nat_tiny',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[128, 256, 512]))
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'rpb': dict(decay_mult=0.), 'norm': dict(decay_mult=0.)}))
