# Mask R-CNN 1x COCO, HaloNet-26t (timm halonet26t.a1h_in1k weights). HaloNet has no official detection code; the
# ResNet-style backbone takes mmdet's ResNet-50 conventions (configs/_base_/models/mask-rcnn_r50_fpn.py: stem + first
# stage frozen, BatchNorms frozen, no output norms) and the AdamW recipe of mmdet's Swin-T 1x
# (lr 1e-4 wd 0.05, no decay on norms). Inputs are zero-padded to multiples of 256 (halo block 8 x stride 32), unmasked.
_base_ = './_base_/mask_rcnn_1x.py'
# download by hand (nothing is fetched at run time):
# https://huggingface.co/timm/halonet26t.a1h_in1k/resolve/main/model.safetensors
pretrained = 'checkpoints/halonet26t.a1h_in1k.safetensors'
model = dict(
    backbone=dict(
        model_name='vz_halonet26t',
        frozen_stages=1,
        norm_eval=True,
        out_norm=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[256, 512, 1024, 2048]))
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.))
