# Mask R-CNN 1x COCO, DaViT-Tiny (timm davit_tiny.msft_in1k weights). Source: dingmyu/davit
# mmdet/configs/davit_maskrcnn_1x_coco.py (drop path 0.1, a LayerNorm per output, multi-scale + crop augmentation,
# AdamW lr 1e-4 wd 0.05, mmdet schedule_1x).
_base_ = './_base_/mask_rcnn_1x_ms_crop.py'
# download by hand (nothing is fetched at run time):
# https://huggingface.co/timm/davit_tiny.msft_in1k/resolve/main/model.safetensors
pretrained = 'checkpoints/davit_tiny.msft_in1k.safetensors'
model = dict(
    backbone=dict(
        model_name='vz_davit_tiny',
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
optim_wrapper = dict(optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05))
