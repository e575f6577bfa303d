# Mask R-CNN 1x COCO, DiNAT-Tiny. Source: SHI-Labs/Neighborhood-Attention-Transformer
# detection/configs/dinat/mask_rcnn_dinat_tiny_3x_coco.py (COCO dilations per block, drop path 0.2, a LayerNorm per
# output, AdamW lr 1e-4 wd 0.05 without decay on rpb / norms, fp16: add --amp). The official detectors are 3x with
# multi-scale + crop augmentation; this is the 1x schedule (mmdet schedule_1x, single-scale 1333x800).
_base_ = './_base_/mask_rcnn_1x.py'
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
    neck=dict(in_channels=[64, 128, 256, 512]))
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'rpb': dict(decay_mult=0.), 'norm': dict(decay_mult=0.)}))
