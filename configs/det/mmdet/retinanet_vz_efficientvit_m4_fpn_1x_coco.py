# RetinaNet 1x COCO, EfficientViT-M4 (timm efficientvit_m4.r224_in1k weights). Source: microsoft/Cream
# EfficientViT/downstream/configs/retinanet_efficientvit_m4_fpn_1x_coco.py: the three levels (strides 16 / 32 / 64)
# feed EfficientViTFPN, which adds stride 8 with one transposed conv and stride 128 with a conv on the input (P3-P7);
# BatchNorms frozen (the official train() keeps them in eval), no output norms, AdamW lr 1e-4 wd 0.05 without decay on
# attention biases, mmdet schedule_1x (warmup 500 iters, steps 8 / 11).
_base_ = './_base_/retinanet_1x.py'
# download by hand (nothing is fetched at run time):
# https://huggingface.co/timm/efficientvit_m4.r224_in1k/resolve/main/model.safetensors
pretrained = 'checkpoints/efficientvit_m4.r224_in1k.safetensors'
model = dict(
    backbone=dict(
        model_name='vz_efficientvit_m4',
        out_indices=(0, 1, 2),
        norm_eval=True,
        out_norm=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(
        _delete_=True,
        type='EfficientViTFPN',
        in_channels=[128, 256, 384],
        out_channels=256,
        start_level=0,
        add_extra_convs='on_input',
        num_outs=5,
        num_extra_trans_convs=1))
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'attention_biases': dict(decay_mult=0.)}))
