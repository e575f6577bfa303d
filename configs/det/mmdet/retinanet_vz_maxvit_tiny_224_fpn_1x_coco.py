# RetinaNet 1x COCO, MaxViT-T (timm maxvit_tiny_tf_224 weights). MaxViT has no official mmdet code; settings are
# mmdet's Swin-T 1x ones (configs/swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py backbone and AdamW lr 1e-4 wd 0.05
# without decay on norms / position tables, a LayerNorm per output; mmdet's RetinaNet-Swin feeds strides 8-32 only),
# with MaxViT's BatchNorms frozen (norm_eval). Inputs are zero-padded to multiples of 224 (window 7 x stride 32).
_base_ = './_base_/retinanet_1x.py'
# download by hand (nothing is fetched at run time):
# https://huggingface.co/timm/maxvit_tiny_tf_224.in1k/resolve/main/model.safetensors
pretrained = 'checkpoints/maxvit_tiny_tf_224.in1k.safetensors'
model = dict(
    backbone=dict(
        model_name='vz_maxvit_tiny_224',
        norm_eval=True,
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[128, 256, 512]))
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={
        'relative_position_bias_table': dict(decay_mult=0.),
        'norm': dict(decay_mult=0.)}))
