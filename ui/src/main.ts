import './app.css';
import { mount } from 'svelte';
import App from './App.svelte';
import { installRouter } from './lib/router.svelte';

installRouter();
mount(App, { target: document.getElementById('app')! });
