// Noise: marble, a sine grating whose phase is displaced by turbulence.
float turb(vec2 p) {
    float s = 0.0, a = 0.5;
    for (int i = 0; i < 5; i++) { s += a * abs(gnoise(p)); p = rot(0.5) * p * 2.02; a *= 0.5; }
    return s;
}
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = centered(fragCoord);
    vec2 dir = vec2(cos(P0.x * TAU), sin(P0.x * TAU));
    float freq = 2.0 + 10.0 * P0.y;
    float t = turb(uv * (1.5 + 3.0 * P0.z) + iTime * 0.05);
    float v = 0.5 + 0.5 * sin(freq * dot(uv, dir) + (3.0 + 12.0 * P0.w) * t);
    v = pow(v, 0.3 + 3.0 * P2.x);
    fragColor = vec4(ramp3(v, P1), 1.0);
}
