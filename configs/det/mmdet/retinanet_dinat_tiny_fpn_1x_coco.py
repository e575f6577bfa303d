# RetinaNet 1x COCO, DiNAT-Tiny. The official repo (SHI-Labs/Neighborhood-Attention-Transformer) has no RetinaNet; the
# backbone settings and optimizer are those of its detection/configs/dinat/mask_rcnn_dinat_tiny_3x_coco.py (COCO
# dilations, drop path 0.2, a LayerNorm per output, AdamW lr 1e-4 wd 0.05 without decay on rpb / norms).
_base_ = './_base_/retinanet_1x.py'
# download by hand (nothing is fetched at run time):
# https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_tiny_in1k_224.pth
pretrained = 'checkpoints/dinat_tiny_in1k_224.pth'
# DiNAT's detection dilations (sized for ~800x1333 inputs; maps smaller than 7 x dilation are zero-padded, NATTEN-like)
dilations = [[1, 28, 1], [1, 7, 1, 14], [1, 3, 1, 5, 1, 7, 1, 3, 1, 5, 1, 7, 1, 3, 1, 5, 1, 7], [1, 3, 1, 3, 1]]
model = dict(
    backbone=dict(
        model_name='dinat_tiny',
        drop_path_rate=0.2,
        model_kwargs=dict(dilations=dilations),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[128, 256, 512]))
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'rpb': dict(decay_mult=0.), 'norm': dict(decay_mult=0.)}))
