# Mask R-CNN 1x COCO, Agent-Swin-T. Source: LeapLabTHU/Agent-Attention
# downstream/detection/configs/agent_swin/agent_swin_t_mrcnn_1x_9-12-14-7.py (agent grids 9-12-14-7 for dense inputs,
# drop path 0.1, a LayerNorm per output (mmdet Swin), multi-scale + crop augmentation, AdamW lr 1e-4 wd 0.05 without
# decay on norms / position tables / agent biases, mmdet schedule_1x). The official window_size=56 is the agent blocks'
# whole-map "window" (img_size / 4); vitzoo's default window blocks (7) match it.
_base_ = './_base_/mask_rcnn_1x_ms_crop.py'
pretrained = 'checkpoints/agent_swin_t.pth'  # official release (Agent-Attention README); its layout is mapped on load
model = dict(
    backbone=dict(
        model_name='agent_swin_t',
        drop_path_rate=0.1,
        model_kwargs=dict(downstream_agent_shapes=[(9, 9), (12, 12), (14, 14), (7, 7)]),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={
        'absolute_pos_embed': dict(decay_mult=0.),
        'relative_position_bias_table': dict(decay_mult=0.),
        'norm': dict(decay_mult=0.),
        'an_bias': dict(decay_mult=0.),
        'na_bias': dict(decay_mult=0.),
        'ah_bias': dict(decay_mult=0.),
        'aw_bias': dict(decay_mult=0.),
        'ha_bias': dict(decay_mult=0.),
        'wa_bias': dict(decay_mult=0.)}))
